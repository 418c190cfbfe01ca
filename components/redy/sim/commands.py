"""`redy sim membership`, `balance`, `plan`, ...: thin click front ends of redy.sim."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson


def _emit(result: dict[str, object], as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode())
    else:
        click.echo(
            orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode()
        )


def _run(
    simulate: Any, options: dict[str, Any], total: int, what: str, plot_file: str | None
) -> dict[str, Any]:
    """Run a simulator with progress on a terminal; draw its result when --plot is given."""
    from redy.sim.progress import progress_for

    with progress_for(simulate, total, what) as extra:
        result: dict[str, Any] = simulate(**options, **extra)
    if plot_file:
        from redy.sim import plots

        getattr(plots, f"plot_{simulate.__name__.removeprefix('simulate_')}")(result, plot_file)
    return result


_plot_option = click.option(
    "--plot",
    "plot_file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also draw the result to FILE.png (matplotlib).",
)


FC = TypeVar("FC", bound=Callable[..., Any])


def _rounds_option(default: int, text: str) -> Callable[[FC], FC]:
    return click.option(
        "--rounds", type=click.IntRange(1), default=default, show_default=True, help=text
    )


def _adversaries_option(attack: str) -> Callable[[FC], FC]:
    return click.option(
        "--adversaries",
        type=click.FloatRange(0.0, 1.0, max_open=True),
        default=0.0,
        show_default=True,
        help=f"Fraction of the nodes that are hostile members (valid identity), running the "
        f"attack of issue 10 against the real cores: {attack}",
    )


@click.group()
def sim() -> None:
    """Run the same pure protocol cores as the real processes for many nodes in one process."""


@sim.command("membership")
@click.option("--nodes", type=click.IntRange(2), default=1000, show_default=True)
@click.option(
    "--view",
    "view_size",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="View size c.",
)
@click.option(
    "--shuffle",
    "shuffle_length",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="Shuffle length SL (< c).",
)
@click.option("--cycles", type=click.IntRange(0), default=100, show_default=True)
@click.option(
    "--bootstrap", type=click.Choice(["star", "ring", "random"]), default="star", show_default=True
)
@click.option(
    "--crash",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Fraction of live nodes that crash at --crash-at.",
)
@click.option("--crash-at", type=click.IntRange(0), default=None)
@click.option(
    "--join",
    "join_count",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Nodes that join through one introducer at --join-at.",
)
@click.option("--join-at", type=click.IntRange(0), default=None)
@click.option(
    "--loss",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Probability that any one message is lost.",
)
@click.option(
    "--detector",
    type=click.Choice(["cyclon", "redy", "verify"]),
    default="redy",
    show_default=True,
    help="cyclon: a timeout only; redy: also a refused connection (state push); verify: redy "
    "and every admitted entry dialled at once.",
)
@click.option(
    "--remove-sweep",
    is_flag=True,
    help="On the final overlay, remove nodes in 5%% steps and report the largest component.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--engine",
    type=click.Choice(["fast", "core"]),
    default=None,
    help="fast (the default): the shuffle compiled over arrays (10^6 nodes); core (the default "
    "with --adversaries or --secure): every node a redy.membership.cyclon.Cyclon (or "
    "SecureCyclon), as in the governance processes (the reference). --secure runs on both; "
    "--adversaries without --secure only on core.",
)
@_adversaries_option(
    "eclipse: each sends 4 shuffle requests per period to honest nodes, answers with poison "
    "(invented nodes, forged addresses, its fellows); reports their share of honest views. "
    "With --secure: a coalition running --strategy (redy.sim.coalition)."
)
@click.option(
    "--secure",
    is_flag=True,
    help="The shuffle with signed descriptors (redy.membership.secure, issue 26); with "
    "--engine fast, its rules compiled over arrays (redy.sim.array_secure).",
)
@click.option(
    "--strategy",
    default="mix",
    show_default=True,
    help="--secure --adversaries: the members' strategies, a comma-separated list of hoard, "
    "focus, rate, replay, pairs, poison, or mix (each member one in turn).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
@_plot_option
def sim_membership(as_json: bool, plot_file: str | None, **options: Any) -> None:
    """Simulate the shuffle membership protocol, cycle by cycle."""
    from redy.sim.membership import simulate_membership

    _emit(_run(simulate_membership, options, options["cycles"], "cycles", plot_file), as_json)


@sim.command("balance")
@click.option("--nodes", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--scenario",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="YAML scenario: 'mix:' (node kinds and their share) and/or 'nodes:' (ids and bids).",
)
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True)
@_rounds_option(40, "Gossip rounds per phase.")
@click.option(
    "--phases",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Price phases per epoch, each on a finer window around the last price "
    "(0: as many as reach 0.01 EUR/MWh).",
)
@click.option(
    "--price-floor", type=float, default=-500.0, show_default=True, help="Lowest price, EUR/MWh."
)
@click.option(
    "--price-cap", type=float, default=4000.0, show_default=True, help="Highest price, EUR/MWh."
)
@click.option(
    "--price-points",
    type=click.IntRange(5, 510),
    default=201,
    show_default=True,
    help="Prices per phase (the gossip vector's length).",
)
@click.option("--view", "view_size", type=click.IntRange(1), default=20, show_default=True)
@click.option("--shuffle", "shuffle_length", type=click.IntRange(1), default=8, show_default=True)
@click.option("--crash", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True)
@click.option("--crash-at", type=click.IntRange(0), default=None)
@click.option("--loss", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True)
@click.option(
    "--aggregation",
    type=click.Choice(["pushsum", "flow"]),
    default=None,
    help="Gossip aggregation (default: the better one, see README).",
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "fast", "core"]),
    default="auto",
    show_default=True,
    help="fast: the market compiled over arrays (10^5 nodes); core: every node a "
    "redy.balancing PriceDiscovery, as in the governance processes (the reference); "
    "auto: core up to 100 nodes, fast above.",
)
@_adversaries_option(
    "price steering (push-sum): each pushes the most mass the bounds let through, crossing at "
    "400 EUR/MWh, to 12 honest nodes per round; reports how far the honest prices moved."
)
@click.option(
    "--market",
    type=click.Choice(["pushsum", "offers", "cells"]),
    default=None,
    help="pushsum (without --market): the gossip of curves; offers: every node an OfferCore of "
    "redy.balancing.offers, signed offers passed on in waves over the overlay on an event "
    "clock (link delay 5 +- 2 ms), cleared exactly on every node; O(N) offers per node per "
    "epoch: about a minute of CPU per epoch at 1,000 nodes. cells: the cell market of "
    "redy.balancing.cells (offers checked inside cells, co-signed sums between them, the "
    "price refined in phases), 10^3 to 10^6 nodes; with --engine core every node runs the "
    "cell market's protocol message by message (redy.balancing.cell_node), beside the model's "
    "counts for the same nodes (a few thousand nodes at most).",
)
@click.option(
    "--cell-size",
    type=click.IntRange(4),
    default=None,
    help="--market cells: members per cell on average (default 128).",
)
@click.option(
    "--attack",
    default=None,
    help="--market offers or cells with --adversaries: the members' strategies, "
    "comma-separated, from sell-floor, buy-cap, two-faced, withhold, late, replay, early (and "
    "forge, cells only); or mix (each member one of them in turn, the default).",
)
@click.option(
    "--epoch-s",
    type=click.FloatRange(0.0, min_open=True),
    default=None,
    help="--market offers: the market interval, s (default 4).",
)
@click.option(
    "--capacity-kw",
    type=click.FloatRange(0.0, min_open=True),
    default=100_000.0,
    show_default=True,
    help="The grid's bound on one node's net injection (the governance's capacity_kw): the "
    "mass bounds honest nodes hold every push to.",
)
@click.option("--dump-curves", type=click.Path(dir_okay=False, writable=True), default=None)
@click.option(
    "--dump-dispatch",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write every node's dispatch (kW, one per bid), epoch by epoch, as JSON.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
@_plot_option
def sim_balance(as_json: bool, plot_file: str | None, **options: Any) -> None:
    """Simulate decentralized balancing (membership + gossip + clearing) epoch by epoch."""
    from redy.sim.balance import simulate_balance

    if plot_file and options.get("market") in ("offers", "cells"):
        # Their reports have no imbalance or spread per epoch to draw.
        raise click.UsageError(
            "--plot draws the push-sum market only; --market offers and cells have no plot"
        )

    _emit(_run(simulate_balance, options, options["epochs"], "epochs", plot_file), as_json)


@sim.command("plan")
@click.option(
    "--nodes",
    type=click.IntRange(2),
    default=1000,
    show_default=True,
    help="Households (30 percent with a battery, 30 percent with an EV), one gas plant per 200 "
    "nodes and one wind farm per 500.",
)
@click.option(
    "--days",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Plan days (12:00 to 12:00, 96 intervals of 15 min each).",
)
@click.option(
    "--forecast",
    type=click.Choice(["perfect", "model"]),
    default="model",
    show_default=True,
    help="perfect: every node knows the actual values ahead; model: PV, load and wind "
    "forecasts whose error grows with the lead time (day-ahead PV nMAE about 20 percent), EVs "
    "known from their arrival (redy.sim.plan).",
)
@click.option(
    "--reference/--no-reference",
    default=True,
    show_default=True,
    help="Also solve each day's perfect-foresight optimum (linopy) for cost_perfect_eur.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on one line.")
def sim_plan(as_json: bool, **options: Any) -> None:
    """Plan a community over rolling horizons day by day (every interval re-solved, its first
    interval binding) and compare each day's cost with perfect foresight and with today's
    single-interval market."""
    from redy.sim.plan import simulate_plan

    _emit(_run(simulate_plan, options, options["days"], "days", None), as_json)


def _int_list(_ctx: Any, _param: Any, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 3 for v in out):
        raise click.BadParameter(f"expected node counts of at least 3, got {value!r}")
    return out


@sim.command("sweep")
@click.argument("kind", type=click.Choice(["membership", "balance"]))
@click.option(
    "--grid",
    "grid_text",
    default="view=4,8,12,20,30 shuffle=2,4,8 period_s=0.5,1,2,5",
    show_default=True,
    help="Space-separated NAME=V1,V2,... over view, shuffle, period_s, timeout_s; the runs are "
    "their cartesian product (SL >= c skipped).",
)
@click.option("--nodes", default="1000", show_default=True, callback=_int_list)
@click.option("--seeds", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--scenario",
    type=click.Choice(["smartgrid", "none"]),
    default="smartgrid",
    show_default=True,
    help="smartgrid: also run each configuration through a day of grid churn (redy.sim.churn).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=None,
    help="Worker processes (default 1, or REDY_SWEEP_JOBS: the machine may be shared).",
)
@_rounds_option(20, "balance: gossip rounds per phase of the market run on each overlay.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), required=True, help="CSV to write or resume."
)
def sim_sweep(
    kind: str,
    grid_text: str,
    nodes: list[int],
    seeds: int,
    scenario: str,
    jobs: int | None,
    rounds: int,
    output: str,
) -> None:
    """Run the simulators over a grid of shuffle settings: one CSV row per run, resumable."""
    from redy.sim.sweep import default_jobs, parse_grid, sweep

    done, skipped = sweep(
        kind,
        parse_grid(grid_text),
        nodes,
        seeds,
        output,
        scenario=scenario,
        jobs=jobs or default_jobs(),
        rounds=rounds,
    )
    click.echo(f"{done} runs done, {skipped} already in {output}")


@sim.command("study")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.option("--docs", default="docs", show_default=True, help="Where the report and plots go.")
@click.option("--balance", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option(
    "--scale",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A membership sweep at another number of nodes, shown as one more table.",
)
def sim_study(results: str, docs: str, balance: str | None, scale: str | None) -> None:
    """Build the shuffle study (markdown and plots) from a membership sweep's CSV."""
    from redy.sim.study import build_report

    path = build_report(results, docs, balance_csv=balance, scale_csv=scale)
    click.echo(f"wrote {path}")
