"""`privlearn fl serve` / `fl join`: one federated run across real machines through Flower.

`serve` starts a SuperLink and runs a `RunConfig` (the same options as `fl run`) on the
SuperNodes that `join` starts, one per data partition. TLS and SuperNode authentication are
Flower's own (see docs/flower.md): the certificate flags go to `flower-superlink` /
`flower-supernode` unchanged."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import typer

from privlearn.cli import fields
from privlearn.cli.errors import UsageError
from privlearn.cli.options import check_out_dir, console


def _opt(name: str, annotation, option) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
    )


def _tls_options(server: bool) -> list[inspect.Parameter]:
    files = (
        [
            ("ssl_certfile", "the SuperLink's TLS certificate (PEM)"),
            ("ssl_keyfile", "the SuperLink's TLS private key (PEM)"),
            ("ssl_ca_certfile", "the CA certificate that signed it (PEM)"),
        ]
        if server
        else [("root_certificates", "the CA certificate that verifies the SuperLink's (PEM)")]
    )
    out = [
        _opt(
            name,
            Path | None,
            typer.Option(None, exists=True, dir_okay=False, help=text, show_default="none"),
        )
        for name, text in files
    ]
    out.append(
        _opt(
            "insecure",
            bool,
            typer.Option(False, help="no TLS: plaintext gRPC (loopback or a trusted network)"),
        )
    )
    return out


def _tls(insecure: bool, **files):
    from privlearn.fl.flower_deploy import Tls

    given = {k: None if v is None else str(v) for k, v in files.items()}
    if insecure == any(given.values()):
        raise UsageError(
            "give either the TLS certificate flags or --insecure (Flower refuses to start "
            "without one or the other)"
        )
    return Tls(**given)


def _serve_options() -> list[inspect.Parameter]:
    from privlearn.fl.run import RunConfig

    return [
        _opt(
            "config",
            Path | None,
            typer.Option(
                None,
                exists=True,
                dir_okay=False,
                help="YAML config; flags override it",
                show_default="none",
            ),
        ),
        *fields.options(RunConfig, out={"callback": check_out_dir}),
        _opt(
            "fleet_address",
            str,
            typer.Option("0.0.0.0:9092", help="where SuperNodes connect (Fleet API)"),
        ),
        _opt(
            "control_address",
            str,
            typer.Option("127.0.0.1:9093", help="Control API (`flwr run`, `flwr ls`)"),
        ),
        _opt(
            "serverappio_address",
            str,
            typer.Option("127.0.0.1:9091", help="ServerAppIo API (the ServerApp process)"),
        ),
        *_tls_options(server=True),
        _opt(
            "node_auth",
            bool,
            typer.Option(
                False,
                help="admit only SuperNodes registered with `flwr supernode register` "
                "(Flower's SuperNode authentication)",
            ),
        ),
    ]


def serve_command(
    ctx: typer.Context,
    config: Path | None,
    fleet_address: str,
    control_address: str,
    serverappio_address: str,
    ssl_certfile: Path | None,
    ssl_keyfile: Path | None,
    ssl_ca_certfile: Path | None,
    insecure: bool,
    node_auth: bool,
    **values,
) -> None:
    """Start a Flower SuperLink and run this config on the SuperNodes that join it."""
    from privlearn.fl.flower_deploy import serve
    from privlearn.fl.run import RunConfig

    tls = _tls(insecure, certfile=ssl_certfile, keyfile=ssl_keyfile, ca_certfile=ssl_ca_certfile)
    cfg = RunConfig.from_yaml(config) if config is not None else RunConfig()
    cfg = dataclasses.replace(cfg, **fields.given(RunConfig, ctx, values))
    home = Path(cfg.out) / "flower"
    console.print(
        f"SuperLink: SuperNodes join at {fleet_address}; waiting up to {cfg.flower_timeout:g} s "
        f"for {cfg.n_clients} of them (privlearn fl join --superlink HOST:"
        f"{fleet_address.rpartition(':')[2]} --partition-id i --num-partitions {cfg.n_clients})"
    )
    tls = dataclasses.replace(tls, root_certificates=tls.ca_certfile)  # how `flwr run` verifies
    doc = serve(cfg, home, fleet_address, control_address, serverappio_address, tls, node_auth)
    last = doc["rounds"][-1]
    per_round = sum(r["seconds"] for r in doc["rounds"]) / len(doc["rounds"])
    wire = sum(r["bytes_down"] + r["bytes_up"] for r in doc["rounds"]) / len(doc["rounds"])
    console.print(
        f"{len(doc['rounds'])} rounds: test_acc={last.get('test_acc')} "
        f"seconds_per_round={per_round:.2f} bytes_per_round={wire:.0f}; "
        f"wrote {cfg.out}/metrics.json, server.pt (Flower logs in {home})"
    )


def join(
    superlink: str = typer.Option(
        ..., help="the SuperLink's Fleet API, HOST:PORT", show_default="required"
    ),
    partition_id: int = typer.Option(
        ..., help="this node's data partition (client id)", show_default="required"
    ),
    num_partitions: int = typer.Option(
        ..., help="partitions in the run (its n_clients)", show_default="required"
    ),
    clientappio_address: str = typer.Option(
        "127.0.0.1:9094", help="this node's ClientAppIo API (one free port per node)"
    ),
    root_certificates: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="the CA certificate that verifies the SuperLink's (PEM)",
        show_default="none",
    ),
    insecure: bool = typer.Option(False, help="no TLS: plaintext gRPC"),
    auth_key: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="this node's private key for SuperNode authentication (its public key is "
        "registered on the SuperLink with `flwr supernode register`)",
        show_default="none",
    ),
    home: Path = typer.Option(
        Path(".flwr-node"), help="Flower's state for this node (FLWR_HOME)", callback=check_out_dir
    ),
) -> None:
    """Start a Flower SuperNode for one data partition and serve rounds until stopped."""
    from privlearn.fl.flower_deploy import join as run_node

    tls = _tls(insecure, root_certificates=root_certificates)
    code = run_node(
        superlink,
        partition_id,
        num_partitions,
        clientappio_address,
        tls,
        home,
        None if auth_key is None else str(auth_key),
    )
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add `serve` and `join` to the `fl` group."""
    app.command("serve")(fields.with_options(_serve_options())(serve_command))
    app.command("join")(join)
