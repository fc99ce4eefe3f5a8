"""The model store: one verified cache of model files shared by every version.

cache      where files live and which names are allowed
index      (path, size, mtime_ns, inode) -> sha256, so unchanged files are never re-read
sources    http(s) and gs:// sources, and which host may see which token
retry      back-off for connection errors, stalls, 429 and 5xx
downloader one file into a process-unique partial: resume, disk check, sha256 while streaming
segments   parallel ranged requests whose bytes are still hashed in file order
locks      one download per target across processes and hosts; sweeping dead owners' files
fetch      make one target present: lock, re-check, share, download, verify, rename
verify     check the models of a version, optionally fixing them
intake     validate and queue a `/download` request (the API calls this)
listing    what `/models/ls` shows
"""
