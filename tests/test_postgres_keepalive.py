"""PostgreSQL sessions notice a vanished peer within about a minute (``POSTGRES_KEEPALIVE``).

A writer whose machine is lost mid-batch leaves its backend idle in a transaction, holding the
stream lock a ``take_over=True`` waits for. Only TCP keepalive on the server's side ends that
backend; with the operating system's defaults (7200 s idle, here) the take-over waited over two
hours. These tests check the settings are in force on both ends of every session a ledger opens
— writes included — and that settings named in the URL win. (Dropping a live peer's packets
needs a firewall these machines do not have, so the minute itself is the kernel's to keep.)
"""

from __future__ import annotations

import socket

import pytest
from sqlalchemy.engine import make_url

from ledger.store.connect import (POSTGRES_KEEPALIVE, postgres_connect_args,
                                  postgres_session_settings)
from ledger.store.store import Store
from ledger.store.writer import StreamWriter
from conftest import postgres_base_url, postgres_schema

SERVER_SETTINGS = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")


def _server_values(connection) -> list[int]:  # noqa: ANN001 - a SQLAlchemy connection
    return [int(connection.exec_driver_sql(f"SHOW {name}").scalar()) for name in SERVER_SETTINGS]


def _client_socket_values(connection) -> tuple[int, int, int, int]:  # noqa: ANN001
    """SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT of the driver's own socket."""
    driver = connection.connection.dbapi_connection
    probe = socket.socket(fileno=socket.dup(driver.fileno()))
    try:
        return (probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
    finally:
        probe.close()


def _over_tcp(url: str) -> None:
    if make_url(url).host in (None, "") or str(make_url(url).host).startswith("/"):
        pytest.skip("LEDGER_TEST_POSTGRES_URL names a Unix socket: TCP keepalive does not apply")


def test_a_writers_session_has_keepalive_set_on_the_server_and_on_its_own_socket() -> None:
    base = postgres_base_url()
    _over_tcp(base)
    wanted = [POSTGRES_KEEPALIVE["idle"], POSTGRES_KEEPALIVE["interval"],
              POSTGRES_KEEPALIVE["count"]]
    assert wanted[0] + wanted[1] * wanted[2] <= 90  # a lost machine is noticed within 1.5 min
    with postgres_schema(base) as url:
        store = Store.open(url, create=True)
        try:
            with StreamWriter(store, "exp-0123456789ab", "main") as writer:
                writer.append("custom", params={"n": 1})
                writer.flush()
                with store.write_connection() as connection, connection.begin():
                    assert _server_values(connection) == wanted
                    assert _client_socket_values(connection) == (1, *wanted)
            with store.engine.connect() as reader:
                assert _server_values(reader) == wanted
        finally:
            store.close()


def test_keepalive_settings_named_in_the_url_win() -> None:
    base = postgres_base_url()
    _over_tcp(base)
    with postgres_schema(base) as url:
        tuned = f"{url}%20-ctcp_keepalives_count%3D7&keepalives_idle=45"
        store = Store.open(tuned, create=True)
        try:
            with store.engine.connect() as connection:
                assert _server_values(connection) == [POSTGRES_KEEPALIVE["idle"],
                                                      POSTGRES_KEEPALIVE["interval"], 7]
                assert _client_socket_values(connection)[:2] == (1, 45)
        finally:
            store.close()


def test_the_url_decides_which_keepalive_settings_the_ledger_adds() -> None:
    plain = make_url("postgresql+psycopg://postgres@db.example:5432/ledger")
    assert postgres_connect_args(plain) == {
        "connect_timeout": 10, "keepalives": 1, "keepalives_idle": 30,
        "keepalives_interval": 10, "keepalives_count": 3}
    assert postgres_session_settings(plain) == [
        "SET lock_timeout = 10000", "SET tcp_keepalives_idle = 30",
        "SET tcp_keepalives_interval = 10", "SET tcp_keepalives_count = 3"]
    tuned = make_url("postgresql+psycopg://postgres@db.example/ledger?keepalives=0"
                     "&options=-c%20tcp_keepalives_idle%3D600")
    assert "keepalives" not in postgres_connect_args(tuned)
    assert postgres_connect_args(tuned)["keepalives_idle"] == 30
    assert "SET tcp_keepalives_idle = 30" not in postgres_session_settings(tuned)
    assert "SET tcp_keepalives_count = 3" in postgres_session_settings(tuned)
