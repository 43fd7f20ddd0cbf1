"""camflow's own exception types: each names the failure and what to do about it."""

from __future__ import annotations


class CamflowError(Exception):
    """Base of every error camflow raises on purpose."""


class ConfigError(CamflowError):
    """A pipeline, algorithm or settings file is invalid.

    The message names the file, the field and the problem.
    """

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source, self.field, self.problem = source, field, problem
        where = f"{source}: {field}" if field else source
        super().__init__(f"{where}: {problem}")


class ParamsError(CamflowError):
    """Stage parameters do not match the algorithm's JSON schema."""

    def __init__(self, pointer: str, problem: str) -> None:
        self.pointer, self.problem = pointer, problem
        super().__init__(f"params{pointer or ''}: {problem}")


class StorageError(CamflowError):
    """S3 could not be reached or refused a request."""


class StoreUnavailable(CamflowError):
    """The store (camflow's database) could not be reached or opened."""


class ObjectMissing(StorageError):
    """S3 answered that the object does not exist."""


class ContentError(CamflowError):
    """An object was read, but what it holds is not what it should be (not JSON, too
    large): S3 is fine, the writer is not."""


class ObjectTooLarge(ContentError):
    """An object over the size camflow reads; its body was not downloaded."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        self.uri, self.size, self.limit = uri, size, limit
        super().__init__(f"{uri} is {size} bytes; the limit is {limit}")


class ExecutorError(CamflowError):
    """An executor could not start, follow or stop a stage."""


class NotFound(CamflowError):
    """The named clip, run or pipeline does not exist."""
