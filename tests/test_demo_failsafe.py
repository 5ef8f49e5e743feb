"""`python -m norton_jax.demo --fresh` removes only what the demo wrote, after checking its input."""

import os

import pytest

from norton_jax import cli, demo


def _user_files(root):
    (root / "sub").mkdir(parents=True)
    (root / "thesis.txt").write_text("years of work")
    (root / "sub" / "data.bin").write_bytes(b"\x00\x01")


def test_fresh_with_config_typo_deletes_nothing(tmp_path, capsys):
    work = tmp_path / "work"
    _user_files(work)
    code = cli.run(demo.main, ["--fresh", "--workdir", str(work), "--config", "configs/tinyy.py"])
    assert code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "configs/tinyy.py" in err and err.count("\n") == 1
    assert (work / "thesis.txt").read_text() == "years of work"
    assert (work / "sub" / "data.bin").exists()


def test_fresh_refuses_a_folder_the_demo_did_not_write(tmp_path):
    work = tmp_path / "work"
    _user_files(work)
    with pytest.raises(cli.UserError, match="did not write"):
        demo.prepare_workdir(str(work), fresh=True)
    with pytest.raises(cli.UserError, match="did not write"):
        demo.prepare_workdir(str(work), fresh=False)
    assert sorted(os.listdir(work)) == ["sub", "thesis.txt"]


def test_fresh_removes_only_demo_outputs(tmp_path):
    work = tmp_path / "work"
    demo.prepare_workdir(str(work), fresh=False)
    assert (work / demo.MARKER).is_file()
    (work / "train" / "checkpoints").mkdir(parents=True)
    (work / "demo_summary.json").write_text("{}")
    (work / "notes.txt").write_text("mine")  # a user's file next to the demo's
    demo.prepare_workdir(str(work), fresh=True)
    assert sorted(os.listdir(work)) == [demo.MARKER, "notes.txt"]
    assert (work / "notes.txt").read_text() == "mine"


def test_a_file_as_workdir_is_refused(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(cli.UserError, match="not a folder"):
        demo.prepare_workdir(str(path), fresh=True)
    assert path.read_text() == "x"


def test_bad_steps_rejected_before_anything(tmp_path, capsys):
    work = tmp_path / "work"
    _user_files(work)
    with pytest.raises(SystemExit) as exc:
        demo.main(["--fresh", "--workdir", str(work), "--steps", "0"])
    assert exc.value.code == 2
    assert "--steps" in capsys.readouterr().err
    assert (work / "thesis.txt").exists()


def test_store_flag_builds_the_corpus_in_the_given_folder(tmp_path, monkeypatch):
    """--store DIR: the corpus is read from (and on first use built into) DIR, not data/build."""
    from data_pipeline import youcook2_mnc
    from norton_jax import train

    config = demo.demo_config("configs/tiny.py", steps=3, store=str(tmp_path / "corpus"))
    assert config.data.store == str(tmp_path / "corpus") and config.train.steps == 3
    built = []
    monkeypatch.setattr(youcook2_mnc, "build", lambda out, *a, **k: built.append(out))
    assert train.resolve_store(config) == str(tmp_path / "corpus")
    assert built == [str(tmp_path / "corpus")]
    default = demo.demo_config("configs/tiny.py")
    assert default.data.store == "data/build/youcook2-mnc" and not default.data.build_anywhere
