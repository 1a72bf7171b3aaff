"""Recordings on disk: the store, upload formats, the view pyramid (issue 5)."""

from .formats import FORMATS as FORMATS
from .formats import FormatError as FormatError
from .formats import UploadParams as UploadParams
from .recording import Meta as Meta
from .recording import Reader as Reader
from .recording import Writer as Writer
from .recording import WriterState as WriterState
from .store import RecordingNotFoundError as RecordingNotFoundError
from .store import RecordingStore as RecordingStore
from .upload import receive_upload as receive_upload

__all__ = ["FORMATS", "FormatError", "Meta", "Reader", "RecordingNotFoundError",
           "RecordingStore", "UploadParams", "Writer", "WriterState", "receive_upload"]
