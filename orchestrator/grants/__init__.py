"""Least-privilege storage access per execution: what a stage may touch (``policy``) and
the short-lived credentials that allow exactly that (``brokers``)."""
