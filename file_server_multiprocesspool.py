#!/usr/bin/env python3
"""File server whose connections are served by a pool of processes.

Usage: python file_server_multiprocesspool.py [--port 6667] [--workers 5] [--root files/]
(see --help).  The pool is fileshare/process_pool.py; the rest is fileshare/server.py.
"""

from fileshare.process_pool import ProcessDispatcher
from fileshare.server import main_for

if __name__ == "__main__":
    main_for(ProcessDispatcher, "File server: each connection is handled by a process from a ProcessPoolExecutor.")
