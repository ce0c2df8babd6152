"""HDF5 weight files written through Python, so a full disk is an ``OSError``."""

from __future__ import annotations

import contextlib
from pathlib import Path

from hubquant import keras_internals as internals


@contextlib.contextmanager
def hdf5_through_python():
    """Make Keras write HDF5 weight files through Python file objects.

    HDF5's own writes to a full disk fail in C, are reported only while objects
    are closed, and closing the file then crashes the process (segmentation
    fault). Through a Python file the failing write raises ``OSError`` (ENOSPC)
    where it happens, and the staging folder can be removed.
    """
    import h5py

    files: list[_File] = []
    h5_files: list[h5py.File] = []

    def get_h5_file(keras_open, store, path, mode=None):
        mode = mode or store.mode
        if mode == "r" or store.archive is not None or not isinstance(path, (str, Path)):
            return keras_open(store, path, mode)
        files.append(_File(path, "r+b" if mode == "a" else "w+b"))
        # The path as the name: Keras reads shard names from it.
        h5_files.append(h5py.File(path, mode, driver="fileobj", fileobj=files[-1]))
        return h5_files[-1]

    try:
        with internals.h5_file_opener(get_h5_file):
            yield
    finally:
        for h5 in h5_files:  # Keras leaves them open when a write fails
            for _ in range(2):  # a close that cannot flush keeps the file open, and
                with contextlib.suppress(Exception):  # HDF5 would crash closing it at exit
                    h5.close()
        for file in files:
            with contextlib.suppress(OSError):
                file.close()
    for file in files:
        if file.error is not None:  # also one that h5py printed and dropped
            raise file.error


class _File:
    """A Python file that keeps its first error: HDF5 reports some failed writes
    only while closing objects, where h5py prints and drops them."""

    def __init__(self, path, mode: str):
        self._file, self.error = open(path, mode), None

    def __getattr__(self, name):  # seek, tell, read, readinto
        attr = getattr(self._file, name)
        return (lambda *args: self._keep_error(attr, *args)) if callable(attr) else attr

    def write(self, data):
        return self._keep_error(self._file.write, data)

    def flush(self):
        return self._keep_error(self._file.flush)

    def truncate(self, size):
        return self._keep_error(self._file.truncate, size)

    def close(self):
        return self._keep_error(self._file.close)

    def _keep_error(self, call, *args):
        try:
            return call(*args)
        except BaseException as e:  # also SIGTERM's, raised inside HDF5's callback
            self.error = self.error or e
            raise
