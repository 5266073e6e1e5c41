"""Locust users for the course's file server: LIST, GET, UPLOAD and DELETE, every byte verified.

    locust -f contrib/locust/locustfile.py --host 127.0.0.1:6667                 # web page on :8089
    locust -f contrib/locust/locustfile.py --host 127.0.0.1:6667 --headless -u 10 -r 10 -t 30s \\
        --op-mix get=1 --file-size-mb 10 --stop-timeout 30 --csv out/run

Distributed: ``--master`` on one host, ``--worker --master-host HOST`` on the others
(each with a checkout of this repository); the master's settings reach every worker.

Settings (Locust custom arguments, so they show in the web page; each also from
the environment, and Locust's config files):

    --op-mix        LOCUST_OP_MIX          task weights, e.g. list=1,get=4,upload=1,delete=1 (left out: 0)
    --file-size-mb  FILE_SIZE_MB           size of the downloaded and uploaded test file, MiB (as stress_test)
    --request-timeout LOCUST_REQUEST_TIMEOUT  seconds a request may wait on any read or write

Each request is one Locust request event: its time, the file bytes it moved and,
if it failed, our ClientError kind (refused, timeout, reset, server, corrupt,
other) as the failure.  The pieces that need no Locust are in fileserver_load.py.
"""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path
from typing import Optional

import gevent
import locust.stats
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fileserver_load as load  # noqa: E402

log = logging.getLogger("fileserver.locust")

_users = itertools.count()
_run: dict = {}              # this test's settings and workload, made at test start on every node
_reported: set = set()       # (op, kind) whose first failure message was logged here


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    # On the parser itself: only its own add_argument marks an option for the web page.
    parser.add_argument("--op-mix", env_var="LOCUST_OP_MIX", default=load.DEFAULT_MIX,
                        help=f"task weights of the operations, e.g. {load.DEFAULT_MIX} (the default); "
                             "one left out gets 0, so get=1 only downloads")
    parser.add_argument("--file-size-mb", env_var="FILE_SIZE_MB", default=load.DEFAULT_SIZE_MB,
                        help=f"size of the test file downloaded and uploaded, MiB, as stress_test's FILE_SIZE_MB "
                             f"(default {load.DEFAULT_SIZE_MB})")
    parser.add_argument("--request-timeout", env_var="LOCUST_REQUEST_TIMEOUT", default=f"{load.DEFAULT_TIMEOUT:g}",
                        help=f"seconds a request waits on any read or write (default {load.DEFAULT_TIMEOUT:g})")


def _settings(environment) -> load.Settings:
    options = environment.parsed_options
    return load.settings(environment.host or "", options.op_mix, options.file_size_mb, options.request_timeout)


@events.init.add_listener
def check_settings(environment, **_kwargs) -> None:
    """Refuse settings that cannot work at start, on the command line's node, with a clear line."""
    options = environment.parsed_options
    if options is None or getattr(options, "worker", False):
        return          # a worker takes its settings from the master
    try:
        load.parse_mix(options.op_mix)
        load.parse_size(options.file_size_mb)
        load.parse_timeout(options.request_timeout)
        if environment.host or options.headless:
            load.parse_host(environment.host or "")
    except load.SettingError as exc:
        log.error("%s", exc)
        sys.exit(2)


@events.test_start.add_listener
def prepare(environment, **_kwargs) -> None:
    """On every node: check the settings, make the test content; on the nodes that run users,
    put the test file on the server (those requests are reported too, as ``prepare:`` rows)."""
    _run.clear()
    _reported.clear()
    try:
        settings = _settings(environment)
    except load.SettingError as exc:
        log.error("the test cannot run: %s", exc)
        return
    if isinstance(environment.runner, MasterRunner):
        _run["settings"] = settings
        return
    workload = load.make_workload(settings.size)
    for sample in load.prepare_server(settings.host, settings.port, workload, settings.timeout):
        report(environment, sample)
    _run.update(settings=settings, workload=workload)


@events.quitting.add_listener
def let_the_csv_catch_up(environment, **_kwargs) -> None:
    """Locust rewrites its CSV files once a CSV_STATS_INTERVAL_SEC and not at exit (locust issue
    #2299): on the node that writes them, wait for one more write, so they hold the final counts."""
    options = environment.parsed_options
    if options is not None and options.csv_prefix and not getattr(options, "worker", False):
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.5)


def report(environment, sample: load.Sample) -> None:
    failure: Optional[load.RequestFailure] = None
    if sample.error is not None:
        failure = load.RequestFailure(sample.error)
        if (sample.op, failure.kind) not in _reported:     # the first of each kind, with its message
            _reported.add((sample.op, failure.kind))
            log.warning("%s %s failed (%s): %s", sample.op, sample.name, failure.kind, failure.detail)
    environment.events.request.fire(request_type=sample.op, name=sample.name, response_time=sample.seconds * 1000,
                                    response_length=sample.length, exception=failure, context={})


class FileServerUser(User):
    """One client of the file server in a closed loop: it sends its next request when the last is answered."""

    wait_time = constant(0)

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.index = next(_users)
        self.session: Optional[load.FileServerSession] = None

    def on_start(self) -> None:
        if "workload" not in _run:
            log.error("user %d stops: the test could not be prepared (see the error above)", self.index)
            raise StopUser()
        settings = _run["settings"]
        # The node's label is read here, not at import: --processes forks workers after importing this file.
        self.session = load.FileServerSession(settings.host, settings.port, _run["workload"],
                                              load.upload_name(load.node_label(), self.index), settings.timeout)
        self.tasks = load.task_list(settings.mix, {"list": FileServerUser.list_files, "get": FileServerUser.get_file,
                                                   "upload": FileServerUser.upload_file,
                                                   "delete": FileServerUser.delete_file})

    def on_stop(self) -> None:
        if self.session is not None:
            self._report(self.session.clean_up())

    def _report(self, samples: list) -> None:
        for sample in samples:
            report(self.environment, sample)

    # The weights here only make the class valid on its own; on_start sets the real ones (--op-mix).
    @task
    def list_files(self) -> None:
        self._report(self.session.list())

    @task
    def get_file(self) -> None:
        self._report(self.session.get())

    @task
    def upload_file(self) -> None:
        self._report(self.session.upload())

    @task
    def delete_file(self) -> None:
        self._report(self.session.delete())
