"""The command line's broker options, shared by every tool that opens a session on a node's
broker: `--broker`, `--user`, `--password`, `--credentials` (or REDY_BROKER, REDY_USER,
REDY_PASSWORD, REDY_CREDENTIALS), and the one way a password is found from them."""

from __future__ import annotations

from typing import Any

import click

from redy.brokers.credentials import load_credentials


def password_for(user: str, password: str | None, credentials: str | None) -> str:
    if password is not None:
        return password
    if credentials is None:
        raise click.UsageError("give --password, or --credentials FILE (a node's credentials.json)")
    # The one reader of credentials files: a bad or unreadable file, or no such account, is the
    # same BrokerError as anywhere else, made one line by the CLI.
    return load_credentials(credentials).password(user)


_broker_option = click.option(
    "--broker",
    required=True,
    envvar="REDY_BROKER",
    help="Broker URI, e.g. mqtt://127.0.0.1:18841 (env REDY_BROKER).",
)
_user_option = click.option("--user", default="operator", show_default=True, envvar="REDY_USER")
_password_option = click.option(
    "--password", default=None, envvar="REDY_PASSWORD", help="(env REDY_PASSWORD)"
)
_credentials_option = click.option(
    "--credentials",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="REDY_CREDENTIALS",
    help="A node's credentials.json; the password of --user is read from it (env REDY_CREDENTIALS).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="JSON output, one per line.")


def with_auth(f: Any) -> Any:
    for option in (_credentials_option, _password_option, _user_option, _broker_option):
        f = option(f)
    return f
