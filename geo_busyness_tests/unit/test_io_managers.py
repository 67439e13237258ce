"""The IO managers on local disk: atomic writes (and the removal of killed writes' temporary
files), the pickle IO manager between two assets, the ``lazy`` input of the Parquet IO manager
(one loader per partition present on disk), and commit groups (two tables of one step published
together: a crash between their writes leaves the previous pair)."""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation.
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import pytest
from upath import UPath

from geo_busyness.resources.io_manager import (
    ParquetIOManagerResource,
    PickleIOManagerResource,
    TableRewrittenError,
    commit_group,
    committed_path,
    write_atomically,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def instance() -> dg.DagsterInstance:
    """An in-memory instance: the IO managers keep their state in ``tmp_path``, and a SQLite
    ``instance_for_test`` would cost seconds per test on a busy machine."""
    return dg.DagsterInstance.ephemeral()


@dataclass(frozen=True)
class Report:
    """A plain Python object for the pickle IO manager (module level, so it pickles)."""

    name: str
    values: tuple[float, ...]
    extra: dict[str, int]


# ---------------------------------------------------------------------------------------------
# write_atomically


class Boom(RuntimeError):
    pass


def failing_writer(handle) -> None:
    handle.write(b"half of a file")
    raise Boom("writer crashed")


def test_write_atomically_writes_the_bytes_and_leaves_only_the_file(tmp_path):
    target = UPath(tmp_path) / "table.parquet"
    write_atomically(target, lambda handle: handle.write(b"payload"))
    assert (tmp_path / "table.parquet").read_bytes() == b"payload"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.parquet"]


def test_write_atomically_replaces_an_existing_file(tmp_path):
    (tmp_path / "model.pickle").write_bytes(b"old contents, longer than the new ones")
    write_atomically(UPath(tmp_path) / "model.pickle", lambda handle: handle.write(b"new"))
    assert (tmp_path / "model.pickle").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pickle"]


def test_write_atomically_failing_writer_leaves_no_target_file(tmp_path):
    with pytest.raises(Boom):
        write_atomically(UPath(tmp_path) / "table.parquet", failing_writer)
    assert not (tmp_path / "table.parquet").exists()


def test_write_atomically_failing_writer_keeps_the_existing_file(tmp_path):
    (tmp_path / "table.parquet").write_bytes(b"previous good version")
    with pytest.raises(Boom):
        write_atomically(UPath(tmp_path) / "table.parquet", failing_writer)
    assert (tmp_path / "table.parquet").read_bytes() == b"previous good version"


def test_write_atomically_failing_writer_leaves_no_temporary_file(tmp_path):
    with pytest.raises(Boom):
        write_atomically(UPath(tmp_path) / "table.parquet", failing_writer)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# PickleIOManager between two assets


def test_pickle_io_manager_round_trips_an_object_between_assets(tmp_path, instance):
    produced = Report("evaluation", (0.5, 1.25), {"rows": 48})
    received = []

    @dg.asset(io_manager_key="pickle_io")
    def report() -> Report:
        return produced

    @dg.asset(io_manager_key="pickle_io")
    def summary(report: Report) -> dict:
        received.append(report)
        return {"name": report.name, "total": sum(report.values)}

    result = dg.materialize(
        [report, summary],
        instance=instance,
        resources={"pickle_io": PickleIOManagerResource(base_path=str(tmp_path))},
    )
    assert result.success
    assert received == [produced]
    assert received[0] is not produced  # it came back through the pickle file
    assert (tmp_path / "report.pickle").is_file()
    assert (tmp_path / "summary.pickle").is_file()

    # A later run that only selects the downstream asset reads the stored object.
    received.clear()
    again = dg.materialize(
        [report, summary],
        selection=[summary],
        instance=instance,
        resources={"pickle_io": PickleIOManagerResource(base_path=str(tmp_path))},
    )
    assert again.success
    assert received == [produced]
    assert again.output_for_node("summary") == {"name": "evaluation", "total": 1.75}


# ---------------------------------------------------------------------------------------------
# ParquetIOManager: lazy inputs


PARTS = dg.StaticPartitionsDefinition(["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"])


def part_frame(key: str) -> pd.DataFrame:
    day = int(key[-2:])
    return pd.DataFrame({"h3_cell": ["a", "b"], "orders": [day, 10 * day], "day": [key, key]})


@dg.asset(partitions_def=PARTS)
def daily(context: dg.AssetExecutionContext) -> pd.DataFrame:
    return part_frame(context.partition_key)


def test_parquet_lazy_input_gives_loaders_only_for_partitions_on_disk(tmp_path, instance):
    received = {}

    @dg.asset(
        ins={
            "daily": dg.AssetIn(
                partition_mapping=dg.AllPartitionMapping(),
                metadata={"allow_missing_partitions": True, "lazy": True},
            )
        }
    )
    def combined(daily) -> pd.DataFrame:
        received.update(daily)
        # Read only one of the partitions, as a windowed consumer would.
        return daily["2024-03-04"]()

    resources = {"io_manager": ParquetIOManagerResource(base_path=str(tmp_path))}
    for key in ("2024-03-01", "2024-03-04"):
        result = dg.materialize([daily], partition_key=key, instance=instance, resources=resources)
        assert result.success
    assert sorted(p.name for p in (tmp_path / "daily").iterdir()) == [
        "2024-03-01.parquet",
        "2024-03-04.parquet",
    ]

    result = dg.materialize(
        [daily, combined], selection=[combined], instance=instance, resources=resources
    )

    assert result.success
    assert sorted(received) == ["2024-03-01", "2024-03-04"]
    assert all(callable(loader) for loader in received.values())
    assert not any(isinstance(loader, pd.DataFrame) for loader in received.values())
    for key, loader in received.items():
        pd.testing.assert_frame_equal(loader(), part_frame(key))
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "combined.parquet"), part_frame("2024-03-04")
    )


def test_parquet_eager_input_with_missing_partitions_loads_the_frames_present(tmp_path, instance):
    received = {}

    @dg.asset(
        ins={
            "daily": dg.AssetIn(
                partition_mapping=dg.AllPartitionMapping(),
                metadata={"allow_missing_partitions": True},
            )
        }
    )
    def combined(daily: dict) -> pd.DataFrame:
        received.update(daily)
        return pd.concat(daily.values(), ignore_index=True)

    resources = {"io_manager": ParquetIOManagerResource(base_path=str(tmp_path))}
    assert dg.materialize(
        [daily], partition_key="2024-03-02", instance=instance, resources=resources
    ).success
    result = dg.materialize(
        [daily, combined], selection=[combined], instance=instance, resources=resources
    )

    assert result.success
    assert list(received) == ["2024-03-02"]
    pd.testing.assert_frame_equal(received["2024-03-02"], part_frame("2024-03-02"))


# ---------------------------------------------------------------------------------------------
# Per-city keys: each city's assets live under their own folder


@pytest.mark.parametrize("city", ["regina", "new_york"])
def test_city_prefixed_keys_are_stored_under_the_city_folder(tmp_path, instance, city):
    """``<city key>/<name>`` keys give ``<base>/<city key>/<name>/<day>.parquet`` (and
    ``<base>/<city key>/<name>.pickle``), so two cities' same-named assets never collide."""

    @dg.asset(key_prefix=[city], name="raw_courier_pings", partitions_def=PARTS)
    def raw(context: dg.AssetExecutionContext) -> pd.DataFrame:
        return part_frame(context.partition_key)

    @dg.asset(key_prefix=[city], name="busyness_model", io_manager_key="object_io_manager")
    def model() -> Report:
        return Report(city, (1.0,), {})

    @dg.asset(
        key_prefix=[city],
        ins={
            "raw": dg.AssetIn(
                key=dg.AssetKey([city, "raw_courier_pings"]),
                partition_mapping=dg.AllPartitionMapping(),
                metadata={"allow_missing_partitions": True},
            ),
            "model": dg.AssetIn(key=dg.AssetKey([city, "busyness_model"])),
        },
    )
    def training_set(raw: dict, model: Report) -> pd.DataFrame:
        assert model.name == city
        return pd.concat(raw.values(), ignore_index=True)

    resources = {
        "io_manager": ParquetIOManagerResource(base_path=str(tmp_path)),
        "object_io_manager": PickleIOManagerResource(base_path=str(tmp_path)),
    }
    assets = [raw, model, training_set]
    day = "2024-03-03"
    for selection, partition in (([raw], day), ([model], None), ([training_set], None)):
        result = dg.materialize(
            assets, selection=selection, partition_key=partition, instance=instance,
            resources=resources,
        )  # fmt: skip
        assert result.success
    stored = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert stored == [
        f"{city}/busyness_model.pickle",
        f"{city}/raw_courier_pings/{day}.parquet",
        f"{city}/training_set.parquet",
    ]
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / city / "raw_courier_pings" / f"{day}.parquet"), part_frame(day)
    )


# ---------------------------------------------------------------------------------------------
# Commit groups: the two tables of one step are published together


PAIR = commit_group("pair_step", ["left", "right"])


class PairConfig(dg.Config):
    rows: int = 3
    crash_after_first: bool = False
    exit_after_first: bool = False


@dg.multi_asset(
    name="pair_step",
    partitions_def=PARTS,
    outs={"left": dg.AssetOut(metadata=PAIR), "right": dg.AssetOut(metadata=PAIR)},
)
def pair_step(context: dg.AssetExecutionContext, config: PairConfig):
    run = context.run.run_id
    yield dg.Output(pd.DataFrame({"run": [run] * config.rows}), output_name="left")
    if config.exit_after_first:
        os._exit(9)  # the process dies between the two writes, as under kill -9
    if config.crash_after_first:
        raise Boom("crashed between the two writes")
    yield dg.Output(pd.DataFrame({"run": [run] * (2 * config.rows)}), output_name="right")


def read_pair(base, partition: str, instance) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both tables as a downstream asset reads them (through the IO manager)."""
    seen = {}

    @dg.asset(partitions_def=PARTS)
    def reader(left: pd.DataFrame, right: pd.DataFrame) -> None:
        seen.update(left=left, right=right)

    result = dg.materialize(
        [pair_step, reader],
        selection=[reader],
        partition_key=partition,
        instance=instance,
        resources={"io_manager": ParquetIOManagerResource(base_path=str(base))},
    )
    assert result.success
    return seen["left"], seen["right"]


def run_pair(base, instance, **config):
    return dg.materialize(
        [pair_step],
        partition_key=DAY,
        instance=instance,
        resources={"io_manager": ParquetIOManagerResource(base_path=str(base))},
        run_config={"ops": {"pair_step": {"config": config}}},
        raise_on_error=False,
    )


DAY = "2024-03-02"


def stored(base) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def assert_one_pair(base, run_id: str, rows: int, instance) -> None:
    left, right = read_pair(base, DAY, instance)
    assert set(left["run"]) == set(right["run"]) == {run_id}
    assert (len(left), len(right)) == (rows, 2 * rows)
    assert stored(base) == [
        f"left/{DAY}.{run_id}.parquet",
        f"pair_step/{DAY}.json",
        f"right/{DAY}.{run_id}.parquet",
    ]


def test_commit_group_publishes_both_tables_with_one_record(tmp_path, instance):
    first = run_pair(tmp_path, instance, rows=3)
    assert first.success
    assert_one_pair(tmp_path, first.run_id, 3, instance)
    record = json.loads((tmp_path / "pair_step" / f"{DAY}.json").read_text())
    assert record["version"] == first.run_id
    assert record["files"] == {
        "left": f"{DAY}.{first.run_id}.parquet",
        "right": f"{DAY}.{first.run_id}.parquet",
    }
    # the path in the materialization metadata is the file written
    [left] = first.asset_materializations_for_node("pair_step")[:1]
    assert str(left.metadata["path"].value).endswith(f"{DAY}.{first.run_id}.parquet")

    # a re-run publishes its own pair and removes the previous one
    second = run_pair(tmp_path, instance, rows=4)
    assert second.success
    assert_one_pair(tmp_path, second.run_id, 4, instance)


def test_crash_between_the_two_writes_keeps_the_previous_pair_readable(tmp_path, instance):
    first = run_pair(tmp_path, instance, rows=3)
    crashed = run_pair(tmp_path, instance, rows=5, crash_after_first=True)
    assert not crashed.success
    # the crashed run wrote its first table, but the commit still names the first run's pair
    assert f"left/{DAY}.{crashed.run_id}.parquet" in stored(tmp_path)
    left, right = read_pair(tmp_path, DAY, instance)
    assert set(left["run"]) == set(right["run"]) == {first.run_id}
    assert (len(left), len(right)) == (3, 6)

    # the next successful write publishes its pair and removes the crashed run's orphan
    third = run_pair(tmp_path, instance, rows=7)
    assert third.success
    assert_one_pair(tmp_path, third.run_id, 7, instance)


def test_process_killed_between_the_two_writes_keeps_the_previous_pair(tmp_path, instance):
    """``os._exit`` in a subprocess right after the first table is written: nothing of the
    dying process runs (no ``finally``, no failure event), as under kill -9."""
    first = run_pair(tmp_path, instance, rows=3)
    script = (
        "import dagster as dg, sys\n"
        "from geo_busyness.resources.io_manager import ParquetIOManagerResource\n"
        "from geo_busyness_tests.unit.test_io_managers import DAY, pair_step\n"
        "dg.materialize([pair_step], partition_key=DAY,\n"
        "    resources={'io_manager': ParquetIOManagerResource(base_path=sys.argv[1])},\n"
        "    run_config={'ops': {'pair_step': {'config': {'rows': 5, 'exit_after_first': True}}}})\n"
    )
    died = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=120
    )
    assert died.returncode == 9, died.stderr.decode()[-2000:]
    orphans = [
        name for name in stored(tmp_path) if name.endswith(".parquet") and first.run_id not in name
    ]
    assert len(orphans) == 1 and orphans[0].startswith(f"left/{DAY}.")
    left, right = read_pair(tmp_path, DAY, instance)
    assert set(left["run"]) == set(right["run"]) == {first.run_id}
    assert (len(left), len(right)) == (3, 6)

    again = run_pair(tmp_path, instance, rows=2)
    assert again.success
    assert_one_pair(tmp_path, again.run_id, 2, instance)


def test_a_plain_file_written_before_is_read_until_the_first_commit(tmp_path, instance):
    for name, rows in (("left", 1), ("right", 2)):
        (tmp_path / name).mkdir()
        pd.DataFrame({"run": ["before"] * rows}).to_parquet(tmp_path / name / f"{DAY}.parquet")
    left, right = read_pair(tmp_path, DAY, instance)
    assert (list(left["run"]), list(right["run"])) == (["before"], ["before"] * 2)
    assert committed_path(tmp_path, ["left"], DAY) == UPath(tmp_path) / "left" / f"{DAY}.parquet"

    result = run_pair(tmp_path, instance, rows=3)
    assert result.success
    assert_one_pair(tmp_path, result.run_id, 3, instance)  # the plain files are gone
    assert committed_path(tmp_path, ["right"], DAY).name == f"{DAY}.{result.run_id}.parquet"


def test_missing_partitions_of_a_commit_group_are_found_by_their_records(tmp_path, instance):
    received = {}

    @dg.asset(
        ins={
            "left": dg.AssetIn(
                partition_mapping=dg.AllPartitionMapping(),
                metadata={"allow_missing_partitions": True},
            )
        }
    )
    def every_left(left: dict) -> None:
        received.update(left)

    assert run_pair(tmp_path, instance, rows=3).success
    result = dg.materialize(
        [pair_step, every_left],
        selection=[every_left],
        instance=instance,
        resources={"io_manager": ParquetIOManagerResource(base_path=str(tmp_path))},
    )
    assert result.success
    assert list(received) == [DAY]
    assert len(received[DAY]) == 3


def test_a_pair_rewritten_while_a_step_reads_it_fails_the_step_instead_of_mixing(tmp_path):
    """A reader keeps the commit it resolved: if that pair is removed under it after it read one
    table, it fails rather than read the other table from a newer run."""
    instance = dg.DagsterInstance.ephemeral()
    assert run_pair(tmp_path, instance, rows=3).success
    manager = ParquetIOManagerResource(base_path=str(tmp_path)).create_io_manager(None)
    upstream = dg.build_output_context(definition_metadata=PAIR)

    def load(name: str) -> pd.DataFrame:
        context = dg.build_input_context(asset_key=dg.AssetKey(name), upstream_output=upstream)
        return manager.load_from_path(context, UPath(tmp_path) / name / f"{DAY}.parquet")

    assert len(load("left")) == 3
    assert run_pair(tmp_path, instance, rows=4).success  # another run rewrites the pair
    with pytest.raises(TableRewrittenError, match="rewritten while this step read"):
        load("right")


# ---------------------------------------------------------------------------------------------
# Temporary files of killed writes


def test_the_temporary_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    script = (
        "import os, sys\n"
        "from upath import UPath\n"
        "from geo_busyness.resources.io_manager import write_atomically\n"
        "def die(handle):\n"
        "    handle.write(b'half of a file'); handle.flush(); os._exit(9)\n"
        "write_atomically(UPath(sys.argv[1]) / 'a.parquet', die)\n"
    )
    died = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60)
    assert died.returncode == 9
    [temporary] = [p.name for p in tmp_path.iterdir()]
    assert temporary.startswith(".tmp-") and temporary.endswith(".parquet")

    write_atomically(UPath(tmp_path) / "b.parquet", lambda handle: handle.write(b"ok"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.parquet"]


def test_temporary_files_of_live_writers_are_kept_and_old_unknown_ones_removed(tmp_path):
    live = tmp_path / f".tmp-{socket.gethostname()}-{os.getpid()}-{'0' * 32}.parquet"
    elsewhere = tmp_path / f".tmp-another-host-1-{'1' * 32}.parquet"
    old_form = tmp_path / f".tmp-{'2' * 32}.parquet"  # the form before the writer's pid
    for path in (live, elsewhere, old_form):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(old_form, (hours_ago, hours_ago))

    write_atomically(UPath(tmp_path) / "b.parquet", lambda handle: handle.write(b"ok"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["b.parquet", live.name, elsewhere.name]
    )
    os.utime(elsewhere, (hours_ago, hours_ago))
    write_atomically(UPath(tmp_path) / "b.parquet", lambda handle: handle.write(b"ok"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b.parquet", live.name])
