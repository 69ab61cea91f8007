"""Publishing summaries to a reference directory: replacing, and merging results computed elsewhere."""

from __future__ import annotations

import io
import sys

import pandas as pd
import pytest

from bmrs.report import study


def _continuous(seed, method, acc, **extra):
    return {"dataset": "fashion_mnist", "network": "lenet5", "method": method, "seed": seed,
            "settings": "{'profile': 'fmnist'}", "test_acc": acc, **extra}


def _csv(rows) -> str:
    return pd.DataFrame(rows).to_csv(index=False)


def _merge_text(reference: str, new: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(study.merge_summary_csv(reference, new)))


def _merge(reference_rows, new_rows) -> pd.DataFrame:
    return _merge_text(_csv(reference_rows), _csv(new_rows))


def test_merge_keeps_other_results_and_replaces_recomputed_ones():
    reference = [_continuous(1000, "bmrs_n", 76.8), _continuous(1000, "snr", 81.0), _continuous(100, "snr", 50.0)]
    new = [_continuous(100, "snr", 17.0, wall_seconds=9.0), _continuous(100, "bmrs_n", 77.0)]
    merged = _merge(reference, new)
    got = {(r.seed, r.method): r.test_acc for r in merged.itertuples()}
    assert got == {(1000, "bmrs_n"): 76.8, (1000, "snr"): 81.0, (100, "snr"): 17.0, (100, "bmrs_n"): 77.0}
    assert len(merged) == 4 and "wall_seconds" in merged.columns  # the union of the columns
    assert merged.loc[merged["seed"] == 1000, "wall_seconds"].isna().all()


def test_merge_replaces_a_whole_curve_and_matches_seeds_written_as_floats():
    def curve(seed, criterion, levels, acc):
        return [{"dataset": "fashion_mnist", "network": "mlp", "seed": seed, "criterion": criterion,
                 "level": lv, "test_acc": acc} for lv in levels]
    merged = _merge(curve(1000.0, "l2", [0, 10, 20], 80.0) + curve(1000.0, "snr", [0, 10], 70.0),
                    curve(1000, "l2", [0, 50], 90.0))
    l2 = merged[merged["criterion"] == "l2"]
    assert sorted(l2["level"]) == [0, 50] and set(l2["test_acc"]) == {90.0}  # the old 3-level curve is gone
    assert len(merged[merged["criterion"] == "snr"]) == 2


def test_a_recomputed_result_replaces_its_older_copy_where_it_stood():
    """The file keeps its order (the README's tables and the verdicts follow it): a result computed again takes
    its older copy's place, a new result goes at the end."""
    reference = [_continuous(1000, m, 80.0) for m in ("none", "l2", "snr")]
    new = [_continuous(1001, "none", 70.0), _continuous(1000, "l2", 81.5)]
    merged = _merge(reference, new)
    assert list(zip(merged["seed"], merged["method"], merged["test_acc"])) == [
        (1000, "none", 80.0), (1000, "l2", 81.5), (1000, "snr", 80.0), (1001, "none", 70.0)]
    # a curve: its new levels, however many, where the old curve began
    curve = lambda c, lv, acc: {"dataset": "d", "network": "mlp", "seed": 1, "criterion": c, "level": lv,  # noqa: E731
                                "test_acc": acc}
    merged = _merge([curve("l2", 0, 1.0), curve("l2", 50, 1.0), curve("snr", 0, 2.0)],
                    [curve("l2", 0, 3.0), curve("l2", 25, 3.0), curve("l2", 50, 3.0)])
    assert list(zip(merged["criterion"], merged["level"], merged["test_acc"])) == [
        ("l2", 0, 3.0), ("l2", 25, 3.0), ("l2", 50, 3.0), ("snr", 0, 2.0)]


def test_merge_writes_the_rows_it_keeps_back_byte_for_byte():
    """Untouched rows are not re-formatted, whatever pandas would make of them: a merge's diff is the rows it
    adds or replaces."""
    header = "dataset,network,method,seed,settings,test_acc,flag\n"
    kept = ('fashion_mnist,lenet5,snr,1000,"{\'profile\': \'fmnist\', \'a\': 1}",88.90000000000001,True\n'
            "fashion_mnist,lenet5,l2,1000.0,x,1e-05,\n")
    reference = header + kept + "fashion_mnist,lenet5,snr,100,x,50.0,False\n"
    new = header + "fashion_mnist,lenet5,snr,100,x,17.25,False\n"
    assert study.merge_summary_csv(reference, new) == header + kept + "fashion_mnist,lenet5,snr,100,x,17.25,False\n"
    # new columns: the union, and each kept cell as it was written
    wider = "dataset,network,method,seed,settings,test_acc,flag,wall\nfashion_mnist,lenet5,snr,100,x,17.25,False,3\n"
    merged = study.merge_summary_csv(reference, wider)
    assert merged.splitlines()[1:3] == [line + "," for line in kept.splitlines()]


def test_merge_with_an_empty_side_and_without_identity_columns():
    reference = _csv([_continuous(1000, "none", 89.0)])
    assert study.merge_summary_csv(reference, "\n") == reference
    assert study.merge_summary_csv("\n", reference) == reference
    with pytest.raises(ValueError, match="no identity column"):
        study.merge_summary_csv(_csv([{"test_acc": 2.0}]), _csv([{"test_acc": 1.0}]))


def test_an_identity_column_one_side_lacks_is_empty_there():
    """A summary that gained an identity column (here p1) still merges with the committed one: the old rows
    are the rows without that column's value."""
    reference = _csv([_continuous(1000, "bmrs_u4", 80.0), _continuous(100, "bmrs_u4", 81.0)])
    new = _csv([_continuous(1000, "bmrs_u4", 82.0, p1=float("nan")), _continuous(1000, "bmrs_u4", 70.0, p1=2.0)])
    merged = _merge_text(reference, new)
    got = sorted((r.seed, r.test_acc, r.p1) for r in merged.fillna({"p1": 0}).itertuples())
    assert got == [(100, 81.0, 0.0), (1000, 70.0, 2.0), (1000, 82.0, 0.0)]


HEADER = "dataset,network,method,seed,test_acc\n"


def test_merge_refuses_what_is_no_summary_and_names_the_line():
    new = HEADER + "a,b,snr,1,9.0\n"
    with pytest.raises(ValueError, match="line 2"):  # an unclosed quote would swallow the new rows
        study.merge_summary_csv(HEADER + 'a,b,snr,1,"9.0\na,b,l2,1,8.0\n', new)
    with pytest.raises(ValueError, match="line 3: 6 fields where the header has 5"):
        study.merge_summary_csv(HEADER + "a,b,l2,1,8.0\na,b,snr,2,1.0,extra\n", new)
    with pytest.raises(ValueError, match="line 2: 1 fields"):  # a conflict marker left in the file
        study.merge_summary_csv(HEADER + "<<<<<<< HEAD\na,b,l2,1,8.0\n", new)


def test_merge_reads_a_byte_order_mark_and_crlf_endings_as_plain_text():
    reference = "\ufeff" + (HEADER + "a,b,l2,1,8.0\na,b,snr,1,1.0\n").replace("\n", "\r\n")
    merged = study.merge_summary_csv(reference, HEADER + "a,b,snr,1,9.0\n")
    assert merged == HEADER + "a,b,l2,1,8.0\na,b,snr,1,9.0\n"


def _write(directory, name, rows):
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(directory / f"{name}.csv", index=False)


def test_publish_replaces_or_merges(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "SUMMARY_DIR", tmp_path / "summary")
    here, ref = tmp_path / "summary" / "quick", tmp_path / "ref"
    _write(here, "continuous", [_continuous(100, "snr", 17.0)])
    _write(ref, "continuous", [_continuous(1000, "snr", 81.0)])
    (here / "posttrain_baselines.csv").write_text("\n")  # a summary with no rows
    study.publish_reference("quick", to=ref, merge=True)
    assert sorted(pd.read_csv(ref / "continuous.csv")["seed"]) == [100, 1000]
    assert (ref / "posttrain_baselines.csv").exists()
    study.publish_reference("quick", to=ref)  # without merge: a copy
    assert list(pd.read_csv(ref / "continuous.csv")["seed"]) == [100]


def test_publish_merge_writes_nothing_when_one_summary_cannot_merge(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "SUMMARY_DIR", tmp_path / "summary")
    here, ref = tmp_path / "summary" / "quick", tmp_path / "ref"
    _write(here, "continuous", [_continuous(100, "snr", 17.0)])
    _write(here, "zz_odd", [_continuous(100, "l2", 1.0)])
    _write(ref, "continuous", [_continuous(1000, "snr", 81.0)])
    ref.joinpath("zz_odd.csv").write_text(HEADER + 'a,b,l2,1,"8.0\n')  # e.g. a conflict resolved by hand
    before = {p.name: p.read_bytes() for p in ref.iterdir()}
    with pytest.raises(ValueError, match=r"cannot merge .*zz_odd.csv into .*zz_odd.csv: the record from line 2 .*"
                                         r"git checkout"):
        study.publish_reference("quick", to=ref, merge=True)
    assert {p.name: p.read_bytes() for p in ref.iterdir()} == before


def test_publish_cli_error_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(study, "SUMMARY_DIR", tmp_path / "nothing")
    monkeypatch.setattr(sys, "argv", ["python -m bmrs.report.study", "publish", "--profile", "quick", "--merge"])
    assert study._main() == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "run_all.sh" in lines[0]
