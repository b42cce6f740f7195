"""The sync I/O of the mesh: `transport.py` and `pool.py` are generated from
`meshlib._async` by `scripts/unasync.py`; `runner.py` (threads) is hand-written."""
