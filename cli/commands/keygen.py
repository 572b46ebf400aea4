"""``ledger keygen``: an Ed25519 key pair for signing compliance reports."""

from __future__ import annotations

import click

from cli.main import OnceOption, cli, refuse_unread_db
from cli.output import emit_json, json_option
from report.signing import generate_key_pair


@cli.command("keygen", epilog="Exit codes: 0 written; 2 a key file exists already (never "
                              "overwritten) or cannot be written.")
@click.option("--out", "prefix", cls=OnceOption, path_like=True, required=True, type=str,
              metavar="PREFIX", help="Write PREFIX.key (private, mode 0600) and PREFIX.pub.")
@json_option
@click.pass_context
def keygen_command(context: click.Context, prefix: str, as_json: bool) -> None:
    """Write an Ed25519 key pair for `ledger report --sign-key`.

    The private key (PKCS#8 PEM, unencrypted) is readable by its owner only; keep it
    somewhere safe. The public key is all that `ledger verify-report` needs.
    """
    # the context, not pass_obj: keygen opens no ledger and takes no --db of its own
    refuse_unread_db(context.obj or {}, "keygen reads none: drop --db")
    private, public, fingerprint = generate_key_pair(prefix)
    if as_json:
        emit_json({"private_key": str(private), "public_key": str(public),
                   "fingerprint": fingerprint, "algorithm": "Ed25519"})
        return
    click.echo(f"private key  {private}  (mode 600: keep it secret)")
    click.echo(f"public key   {public}")
    click.echo(f"fingerprint  {fingerprint}  (SHA-256 of the raw public key)")
