"""``keyslice review`` (the web app) and ``keyslice eval --reviews`` (acceptance and agreement).

Registered on the main Typer app by :mod:`keyslice.cli`; heavy imports stay inside the functions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
TOKEN_ENV = "KEYSLICE_REVIEW_TOKEN"


def review(
    out: Path = typer.Option(..., "--out", help="corpus folder to review"),
    input_dir: Optional[Path] = typer.Option(None, "--input", help="the studies folder the corpus was built from: "
                                             "shows every slice of the series (scroll, choose any slice); "
                                             "without it only the key slice and the top-k positions"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; anything but 127.0.0.1/localhost needs a "
                                               "token on every request"),
    port: int = typer.Option(8765, help="TCP port"),
    token: Optional[str] = typer.Option(None, help=f"access token (default ${TOKEN_ENV}, else a random one)"),
) -> None:
    """Review key slices in the browser: accept, reject, choose another slice, 'not visible', skip, undo."""
    import uvicorn

    from keyslice.pseudonym import MissingKeyError
    from keyslice.review.app import LOCAL_HOSTS, create_app, open_state

    if not out.is_dir():
        raise typer.BadParameter(f"{out} does not exist; build a corpus first with `keyslice build`")
    if input_dir is not None and not input_dir.is_dir():
        raise typer.BadParameter(f"--input {input_dir} is not a folder of studies")
    remote = host not in LOCAL_HOSTS
    started = time.perf_counter()
    try:
        state = open_state(out, input_dir, token=token or os.environ.get(TOKEN_ENV), token_required=remote)
    except MissingKeyError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(code=2) from exc
    hosts = list(LOCAL_HOSTS) + ([host] if remote else [])
    app = create_app(state, allowed_hosts=["*"] if host in ("0.0.0.0", "::") else hosts)
    url = f"http://{host if host not in ('0.0.0.0', '::') else '<this-machine>'}:{port}/"
    console.print(f"{len(state.corpus.items)} findings, {len(state.store.rows())} decisions so far, loaded in "
                  f"{time.perf_counter() - started:.2f} s; slices {'from ' + str(input_dir) if input_dir else 'key slice only (no --input)'}")
    if remote:
        console.print(f"open {url}?token={state.token}  (every request needs this token; keep it private)")
    else:
        console.print(f"open {url}  (Ctrl-C stops; every decision is on disk when the page shows it)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _fmt(x, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.2f}%" if pct else (f"{x:.3f}" if isinstance(x, float) else str(x))


def print_review_metrics(corpus: Path, tolerance_mm: float = 10.0) -> dict:
    """The acceptance table (per model and weights, in the order reviewed), acceptance per organ and
    phase, and reader agreement; returns them as data as well."""
    from keyslice.review.metrics import acceptance_table, reader_agreement
    from keyslice.corpus.sql import connect

    con = connect(corpus)
    models = acceptance_table(con)
    table = Table(title="acceptance of key slices (standing judgements; choose/reject/not visible = not accepted)")
    for col in ("model", "weights", "judged", "accepted", "acceptance", "vs first", "chosen", "rejected",
                "not visible", "readers"):
        table.add_column(col, justify="left" if col in ("model", "weights") else "right")
    for r in models:
        table.add_row(r["model_id"], r["weights_sha256"][:12], str(r["n_judged"]), str(r["n_accepted"]),
                      _fmt(r["acceptance"], True),
                      "-" if r["delta_vs_first"] is None else f"{100 * r['delta_vs_first']:+.2f} pts",
                      str(r["n_chosen"]), str(r["n_rejected"]), str(r["n_not_visible"]), str(r["n_reviewers"]))
    console.print(table)
    extra = {}
    for by in ("organ", "phase", "reviewer", "confidence"):
        rows = con.sql(f"SELECT * FROM review_acceptance_by_{by}").to_arrow_table().to_pylist()
        extra[by] = rows
        key = "uncertain" if by == "confidence" else by
        t = Table(title=f"acceptance by {by}")
        for col in (key, "judged", "acceptance"):
            t.add_column(col)
        for r in rows:
            t.add_row(str(r[key]), str(r["n_judged"]), _fmt(r["acceptance"], True))
        console.print(t)
    judgements = con.sql("SELECT * FROM review_judgements").to_arrow_table().to_pylist()
    agreement = reader_agreement(judgements, tolerance_mm)
    console.print(f"reader agreement: {agreement.n_pairs} selection(s) judged by two readers; "
                  f"Cohen's kappa (accepted or not) {_fmt(agreement.kappa_accept)}, "
                  f"(decision) {_fmt(agreement.kappa_decision)}; second reader's Acc@1 against the first "
                  f"{_fmt(agreement.acc1_second_vs_first, True)} on {agreement.n_slice_pairs} selection(s) where "
                  f"both named a slice (tolerance {tolerance_mm:g} mm)")
    return {"models": models, **extra, "agreement": agreement}
