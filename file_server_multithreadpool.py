#!/usr/bin/env python3
"""File server whose connections are served by a pool of threads.

Usage: python file_server_multithreadpool.py [--port 6667] [--workers 5] [--root files/]
(see --help).  The pool is fileshare/thread_pool.py; the rest is fileshare/server.py.
"""

from fileshare.server import main_for
from fileshare.thread_pool import ThreadDispatcher

if __name__ == "__main__":
    main_for(ThreadDispatcher, "File server: each connection is handled by a thread from a ThreadPoolExecutor.")
