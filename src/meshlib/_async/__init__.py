"""The async I/O of the mesh, written once; `meshlib._sync` is generated from it.

`transport.py` and `pool.py` are the sources of `_sync/transport.py` and
`_sync/pool.py` (`scripts/unasync.py`); `runner.py` is hand-written on
each side, for what tasks and threads do differently.
"""
