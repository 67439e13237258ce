"""The IO managers on local disk: atomic writes, the pickle IO manager between two assets, and
the ``lazy`` input of the Parquet IO manager (one loader per partition present on disk)."""

# No `from __future__ import annotations`: Dagster inspects the `context` annotation.
from dataclasses import dataclass

import dagster as dg
import pandas as pd
import pytest
from upath import UPath

from geo_busyness.resources.io_manager import (
    ParquetIOManagerResource,
    PickleIOManagerResource,
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
