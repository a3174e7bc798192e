"""Serve a trained two-tower model over REST: ``mlflow models serve`` once the model is found.

Examples:
    python -m pipelines.serve                        # models:/recsys_cl_two_tower@champion on 127.0.0.1:5001
    python -m pipelines.serve --model models:/recsys_cl_two_tower/3 --port 8080
    python -m pipelines.serve --alias challenger --set tracking.uri=sqlite:///other/mlflow.db
    curl -s localhost:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_records": [{"history": [1, 50, 260]}]}'

A request row holds ``history``, the user's item ids, oldest first; the answer's row holds
``item_ids`` and ``scores`` (the top 10, none of the history's items) and ``history_known`` (how many
of the history's ids the model knows: unknown ids are ignored). A wrong column or id type is a 400
naming it.

Before the server starts, the model is looked up in the MLflow store (``tracking.uri``, else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``): a missing store, registered model, alias or
version is one line that says what exists and how to fix it. Then it runs
``mlflow models serve --env-manager local`` (uvicorn, from this Python's environment) until Ctrl-C
or SIGTERM, and exits with the server's code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pipelines.cli import base_parser, exits_on_tracking_error, load_config_or_exit, write_summary
from recsys_cl.config import RunConfig
from recsys_cl.tracking import (
    AliasNotFoundError,
    resolve_model_alias,
    resolve_model_dir,
    resolve_tracking_uri,
)

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "two_tower.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = base_parser("python -m pipelines.serve", __doc__, DEFAULT_CONFIG,
                    summary_help="write what is served (model URI and version, store, URL; JSON) to PATH "
                                 "before the server starts",
                    set_example="tracking.uri=sqlite:///mlflow.db")
    p.add_argument("--model", metavar="URI",
                   help="model to serve: models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/model or "
                        "a model directory (default: models:/<tracking.registered_model_name>@<--alias>)")
    p.add_argument("--alias", default="champion", help="registry alias served without --model (default: champion)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=5001, help="port to listen on (default: 5001)")
    return p.parse_args(argv)


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow models serve`` command line, run with this Python."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", host, "-p", str(port)]


@exits_on_tracking_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config_or_exit(args, RunConfig, set_threads=False)
    name = cfg.tracking.registered_model_name
    uri = args.model
    if uri is None and name is None:
        raise SystemExit("serve error: tracking.registered_model_name is null; pass --model <uri or directory>")
    uri = uri or f"models:/{name}@{args.alias}"
    registry, at, alias = uri.removeprefix("models:/").partition("@")
    try:
        if uri.startswith("models:/") and at and "/" not in registry:  # no download: the registry says it all
            found = resolve_model_alias(registry, alias, cfg.tracking, fallback_hint=False)
            version = {"model_version": found["model_version"], "model_run_id": found["model_run_id"]}
            shown = f"{uri} (version {found['model_version']}, run {found['model_run_id']})"
        else:
            version = {}
            resolve_model_dir(uri, cfg.tracking)  # a runs:/ or models:/<name>/<version> URI, or a directory
            shown = uri
    except (AliasNotFoundError, FileNotFoundError) as e:
        raise SystemExit(f"serve error: {e}") from None
    if Path(uri).exists() and not (Path(uri) / "MLmodel").is_file():
        raise SystemExit(f"serve error: {uri} holds no MLmodel file: it is not a logged MLflow model (a recsys_cl "
                         "model directory is served through the model its training run logged); pass "
                         "--model runs:/<run_id>/model or models:/<name>/<version>")
    store = resolve_tracking_uri(cfg.tracking)
    url = f"http://{args.host}:{args.port}/invocations"
    write_summary(args.summary_json, {"model_uri": uri, **version, "tracking_uri": store, "url": url})
    print(f"serving {shown} from {store} at {url} (Ctrl-C stops it)", flush=True)
    # mlflow starts uvicorn by name: this environment's bin/ first on PATH finds the one beside this Python
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    raise SystemExit(run_server(serve_command(uri, args.host, args.port), env))


def run_server(command: list[str], env: dict[str, str]) -> int:
    """Run the server until it exits; its exit code. SIGINT reaches it too (same process group), and
    on SIGTERM or Ctrl-C here ``subprocess.run`` kills it before the exception goes on."""
    return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    main()
