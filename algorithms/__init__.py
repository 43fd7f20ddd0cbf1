"""camflow's built-in stage programs and the small SDK they share.

Each stage is a program that follows the stage contract (see ``contract``); the
orchestrator never imports a stage's code, it only starts its command.
"""
