"""`refmaster corpus build` on a tiny package folder built here from synthesised music."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bridge.cli import main
from engine.model.corpus import build_corpus, licence_of, song_id, split_files, split_songs
from engine.model.synth import synth_song

pytestmark = pytest.mark.skipif(subprocess.run(["which", "dpkg-deb"], capture_output=True).returncode != 0,
                                reason="dpkg-deb is not installed (Debian's dpkg)")

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tiny

Files: *
Copyright: 2026 Somebody
License: GPL-2+

Files: music/open-*.ogg
Copyright: 2026 Somebody Else
License: CC0-1.0
"""


def make_deb(folder: Path, package: str, songs: dict) -> Path:
    """A real .deb (dpkg-deb -b) holding ``{file name: (seed, seconds)}`` as ogg under music/."""
    root = folder / f"build-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\n"
                                             "Maintainer: t <t@example.org>\nDescription: test music\n")
    music = root / "usr" / "share" / "games" / package / "music"
    music.mkdir(parents=True)
    for name, (seed, seconds) in songs.items():
        sf.write(music / name, synth_song(seed, seconds).T * 0.5, 44100, format="OGG", subtype="VORBIS")
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(COPYRIGHT)
    deb = folder / f"{package}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    d = tmp_path_factory.mktemp("debs")
    make_deb(d, "tiny-music-a", {"battle.ogg": (1, 3.0), "battle-loop.ogg": (2, 3.0), "open-sky.ogg": (3, 3.0),
                                 "calm.ogg": (4, 3.0), "jingle.ogg": (5, 0.8)})
    make_deb(d, "tiny-music-b", {f"track{i}.ogg": (10 + i, 2.5) for i in range(1, 7)})
    return d


def test_song_ids_group_variants_and_split_is_deterministic():
    assert song_id("p", "Battle-Loop.ogg") == song_id("p", "battle.ogg") == "p/battle"
    assert song_id("p", "track3_enhanced.opus") == song_id("p", "track3.opus") == "p/track3"
    assert song_id("p", "track_1.ogg") != song_id("p", "track_2.ogg")  # numbers name different songs
    songs = [f"p/s{i}" for i in range(100)]
    a, b = split_songs(songs), split_songs(list(reversed(songs)))
    assert a == b
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "validation", "test")}
    assert counts["test"] >= 40 and counts["validation"] >= 10 and counts["train"] == 100 - counts["test"] - counts["validation"]


def test_licence_follows_the_dep5_stanza_of_each_file():
    assert licence_of(COPYRIGHT, "usr/share/games/x/music/open-sky.ogg") == "CC0-1.0"
    assert licence_of(COPYRIGHT, "usr/share/games/x/music/battle.ogg") == "GPL-2+"
    assert licence_of("Licensed under Creative Commons Attribution-ShareAlike 3.0") == "CC-BY-SA-3.0"


def test_build_from_a_package_folder(tmp_path, debs):
    m = build_corpus(tmp_path / "c1", packages=("tiny-music-a", "tiny-music-b"), debs=debs, min_seconds=2.0)
    files = {f["file"]: f for f in m["files"]}
    assert len(files) == 10 and m["skipped"] == ["audio/tiny-music-a/jingle.ogg"]  # the 0.8 s jingle is no song
    a = files["audio/tiny-music-a/battle.ogg"]
    assert a["licence"] == "GPL-2+" and files["audio/tiny-music-a/open-sky.ogg"]["licence"] == "CC0-1.0"
    assert a["sample_rate"] == 44100 and a["channels"] == 2 and a["seconds"] == pytest.approx(3.0, abs=0.01)
    assert -40 < a["lufs"] < -5
    # a song and its loop are one song, in one split
    assert files["audio/tiny-music-a/battle-loop.ogg"]["split"] == a["split"]
    assert {f["split"] for f in files.values()} == {"train", "validation", "test"}
    assert (tmp_path / "c1" / "manifest.csv").read_text().count("\n") == 11
    assert (tmp_path / "c1" / "licences" / "tiny-music-a.copyright").read_text() == COPYRIGHT
    # the same packages give the same split, in another folder
    m2 = build_corpus(tmp_path / "c2", packages=("tiny-music-b", "tiny-music-a"), debs=debs, min_seconds=2.0)
    assert {f["file"]: f["split"] for f in m2["files"]} == {k: v["split"] for k, v in files.items()}
    train = split_files(tmp_path / "c1", "train")
    assert train and all(p.exists() for p in train)
    assert not set(train) & set(split_files(tmp_path / "c1", "test"))


def test_bad_out_and_unreachable_package_are_one_line(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = main(["corpus", "build", "--out", str(blocker / "corpus")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("refmaster: error: corpus: cannot write to")
    # apt-get that cannot reach its repository (a stand-in on PATH that fails as apt-get does)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Unable to locate package wesnoth-1.16-music' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    code = main(["corpus", "build", "--out", str(tmp_path / "corpus")])
    out = capsys.readouterr()
    err = [l for l in out.err.splitlines() if l.startswith("refmaster:")]
    assert code == 2 and len(err) == 1
    assert "downloading wesnoth-1.16-music failed: E: Unable to locate package" in err[0]


def test_eval_on_the_corpus_test_split(tmp_path, debs, capsys):
    """`refmaster eval --corpus`: pairs of different songs (a song's loop is the same song) from the
    test split only, and the count of pairs each system made worse than the untouched input."""
    corpus = tmp_path / "c"
    m = build_corpus(corpus, packages=("tiny-music-a", "tiny-music-b"), debs=debs, min_seconds=2.0)
    song = {Path(f["file"]).name: f["song"] for f in m["files"]}
    test_files = {Path(f["file"]).name for f in m["files"] if f["split"] == "test"}
    code = main(["eval", "--corpus", str(corpus), "--systems", "input,ours-noito", "--pairs", "6", "--seconds", "2",
                 "--json"])
    out = capsys.readouterr().out
    assert code == 0
    r = json.loads(out)
    assert r["pairs"] == 6 and "test split" in r["source"]
    rows = r["rows"]
    for row in rows:
        assert {row["input"], row["reference"]} <= test_files
        assert song[row["input"]] != song[row["reference"]]
    base = {(x["input"], x["reference"]): x for x in rows if x["system"] == "input"}
    ours = [x for x in rows if x["system"] == "ours-noito"]
    for k in ("af", "d_lufs", "bark_db", "d_width"):
        assert r["summary"]["input"]["worse_than_input"][k] == 0
        assert r["summary"]["ours-noito"]["worse_than_input"][k] == sum(
            x[k] > base[(x["input"], x["reference"])][k] for x in ours)
    # asking for every pair gives each ordered pair of different songs once, and none of a song with its loop
    code = main(["eval", "--corpus", str(corpus), "--systems", "input", "--pairs", "1000", "--seconds", "2", "--json"])
    every = json.loads(capsys.readouterr().out)
    want = sum(song[a] != song[b] for a in test_files for b in test_files if a != b)
    assert code == 0 and every["pairs"] == want and len(test_files) > len({song[f] for f in test_files})
    code = main(["eval", "--corpus", str(corpus), "--systems", "input", "--pairs", "2", "--seconds", "2"])
    assert code == 0 and "pairs worse than the untouched input" in capsys.readouterr().out
