"""Subtitle readers and writers (norton_jax.subtitles): exact cue times and texts, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from norton_jax.cli import UserError
from norton_jax.subtitles import Cue, SubtitleError, caption_table, read_subtitles, write_subtitles

# YouTube auto-captions: every line first appears (word-timed) under the previous one, then a 10 ms
# cue repeats it alone, then it moves to the top of the next cue.
YOUTUBE_VTT = """WEBVTT
Kind: captions
Language: en

00:00:00.000 --> 00:00:02.560 align:start position:0%
 
hello<00:00:00.480><c> everyone</c><00:00:00.960><c> welcome</c>

00:00:02.560 --> 00:00:02.570 align:start position:0%
hello everyone welcome
 

00:00:02.570 --> 00:00:05.120 align:start position:0%
hello everyone welcome
to<00:00:03.000><c> the</c><00:00:03.400><c> kitchen</c>

00:00:05.120 --> 00:00:05.130 align:start position:0%
to the kitchen
 

00:00:05.130 --> 00:00:07.900 align:start position:0%
to the kitchen
&gt;&gt; today<00:00:05.600><c> we</c><00:00:06.100><c> cook &amp; eat</c>

00:00:07.900 --> 00:00:07.910 align:start position:0%
&gt;&gt; today we cook &amp; eat
 
"""


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_youtube_rolling_vtt_keeps_each_line_once(tmp_path):
    counts = {}
    cues = read_subtitles(_write(tmp_path / "yt.vtt", YOUTUBE_VTT), counts=counts)
    assert cues == [
        Cue(0.0, 2.57, "hello everyone welcome"),
        Cue(2.57, 5.13, "to the kitchen"),
        Cue(5.13, 7.91, ">> today we cook & eat"),
    ]
    assert [c.line for c in cues] == [5, 13, 21]  # the timing line of the cue that introduced it
    assert counts == {"cues_in_file": 6, "repeated": 3, "empty": 0, "cues": 3}


def test_plain_vtt_with_tags_identifiers_notes_and_hours(tmp_path):
    text = ("\ufeffWEBVTT - a talk\n\nNOTE written by hand\n\n1\n00:00:01.000 --> 00:00:03.500\n"
            "<v Anna>Cut the <i>onions</i></v>\nfinely\n\nintro\n01:02:03.250 --> 01:02:04.000 line:0\nserve\n")
    cues = read_subtitles(_write(tmp_path / "a.vtt", text))
    assert cues == [Cue(1.0, 3.5, "Cut the onions finely"), Cue(3723.25, 3724.0, "serve")]
    assert [c.line for c in cues] == [6, 11]


def test_blank_blocks_and_styles_are_skipped(tmp_path):
    text = ("WEBVTT\n\nSTYLE\n::cue { color: red }\n\nREGION\nid:r1 width:40%\n\n   \n\n"
            "00:00:01.000 --> 00:00:02.000\nhi\n\n \t\n")
    assert read_subtitles(_write(tmp_path / "s.vtt", text)) == [Cue(1.0, 2.0, "hi")]


def test_repeat_after_a_pause_is_kept(tmp_path):
    text = "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nyes\n\n00:00:05.000 --> 00:00:06.000\nyes\n"
    assert read_subtitles(_write(tmp_path / "r.vtt", text)) == [Cue(1.0, 2.0, "yes"), Cue(5.0, 6.0, "yes")]


def test_srt(tmp_path):
    text = ("1\n00:00:00,500 --> 00:00:02,000\n<i>Hello</i> there\nfriend\n\n"
            "2\n00:00:02,250 --> 00:01:00,001\n{\\an8}<b>Chop</b> & <font color=\"red\">stir</font> <3\n\n")
    cues = read_subtitles(_write(tmp_path / "a.srt", text))
    assert cues == [Cue(0.5, 2.0, "Hello there friend"), Cue(2.25, 60.001, "Chop & stir <3")]
    assert [c.line for c in cues] == [2, 7]


def test_whisper_json(tmp_path):
    data = {"text": " Hi. Now boil.", "language": "en", "segments": [
        {"id": 0, "seek": 0, "start": 0.0, "end": 1.84, "text": " Hi.", "tokens": [1, 2], "avg_logprob": -0.2},
        {"id": 1, "seek": 0, "start": 1.84, "end": 4.5, "text": " Now   boil.", "tokens": [3]},
        {"id": 2, "seek": 0, "start": 4.5, "end": 4.6, "text": "  "},
    ]}
    counts = {}
    cues = read_subtitles(_write(tmp_path / "w.json", json.dumps(data)), counts=counts)
    assert cues == [Cue(0.0, 1.84, "Hi."), Cue(1.84, 4.5, "Now boil.")]
    assert counts["empty"] == 1  # the blank segment is dropped and counted
    assert caption_table(cues, tmp_path / "w.json").where == ["w.json segment 0", "w.json segment 1"]


@pytest.mark.parametrize("suffix", [".vtt", ".srt", ".json"])
def test_write_then_read_round_trip(tmp_path, suffix):
    cues = [Cue(0.0, 1.25, "a < b & c > d"), Cue(1.25, 3723.5, "two\nlines"), Cue(4000.001, 4001.999, "end")]
    path = tmp_path / f"out{suffix}"
    write_subtitles(path, cues)
    back = read_subtitles(path)
    assert back == [Cue(0.0, 1.25, "a < b & c > d"), Cue(1.25, 3723.5, "two lines"), Cue(4000.001, 4001.999, "end")]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_written_vtt_and_srt_text(tmp_path):
    cues = [Cue(1.0, 2.5, "x & y"), Cue(3661.5, 3662.0, "z")]
    write_subtitles(tmp_path / "o.vtt", cues)
    write_subtitles(tmp_path / "o.srt", cues)
    assert (tmp_path / "o.vtt").read_text() == (
        "WEBVTT\n\n00:00:01.000 --> 00:00:02.500\nx &amp; y\n\n01:01:01.500 --> 01:01:02.000\nz\n")
    assert (tmp_path / "o.srt").read_text() == (
        "1\n00:00:01,000 --> 00:00:02,500\nx & y\n\n2\n01:01:01,500 --> 01:01:02,000\nz\n\n")


def test_csv_for_the_converter_and_caption_table(tmp_path):
    from data_pipeline.convert import read_captions_csv

    cues = [Cue(0.0, 1.5, 'say "hi", then go'), Cue(2.0, 3.25, "next")]
    write_subtitles(tmp_path / "vid.csv", cues)
    starts, ends, texts = read_captions_csv(str(tmp_path / "vid.csv"))
    np.testing.assert_array_equal(starts, np.float32([0.0, 2.0]))
    np.testing.assert_array_equal(ends, np.float32([1.5, 3.25]))
    assert texts == ['say "hi", then go', "next"]
    read = read_subtitles(_write(tmp_path / "t.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhi\n"))
    table = caption_table(read, tmp_path / "t.vtt")
    assert table.texts == ["hi"] and table.where == ["t.vtt line 3"]
    np.testing.assert_array_equal(table.starts, [1.0])
    np.testing.assert_array_equal(table.ends, [2.0])


@pytest.mark.parametrize("name,text,line,fragment", [
    ("nohead.vtt", "00:00:01.000 --> 00:00:02.000\nhi\n", 1, "starts with 'WEBVTT'"),
    ("badtime.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\n00:00:03,000 --> 00:00:04.000\nbad\n", 6,
     "bad cue timing"),
    ("orphan.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\njust text\n", 6, "not under a cue timing"),
    ("glued.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n00:00:02.000 --> 00:00:03.000\nx\n", 5,
     "empty line before it"),
    ("minute61.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\n00:61:00.000 --> 00:62:00.000\nx\n", 6,
     "bad timestamp '00:61:00.000'"),
    ("late_style.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nok\n\nSTYLE\n::cue { color: red }\n", 6,
     "must come before the first cue"),
    ("backwards.vtt", "WEBVTT\n\n00:00:05.000 --> 00:00:02.000\nbackwards\n", 3, "before start"),
    ("bad.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:0x,000 --> 00:00:03,000\nbad\n", 5,
     "not an SRT block"),
    ("backwards.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:09,000 --> 00:00:03,000\nx\n", 6,
     "before start"),
    ("broken.json", '{"segments": [\n {"start": 0, "end": 1, "text": "a"},\n {"start": 1 "end": 2}]}', 3,
     "not valid JSON"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, text, line, fragment):
    path = _write(tmp_path / name, text)
    with pytest.raises(SubtitleError) as info:
        read_subtitles(path)
    assert isinstance(info.value, UserError)
    assert info.value.line == line
    assert str(info.value).startswith(f"{path}: line {line}: ")
    assert fragment in str(info.value)


@pytest.mark.parametrize("data,fragment", [
    ({"text": "x"}, "'segments' list"),
    ({"segments": [{"start": 0, "text": "a"}]}, "segment 0: needs 'start', 'end' and 'text'"),
    ({"segments": [{"start": 0, "end": 1, "text": "a"}, {"start": "x", "end": 2, "text": "b"}]},
     "segment 1: times must be numbers"),
    ({"segments": [{"start": -1, "end": 1, "text": "a"}]}, "segment 0: start -1 s is negative"),
    ({"segments": [{"start": 0, "end": float("nan"), "text": "a"}]}, "segment 0: times must be finite"),
])
def test_malformed_whisper_json_names_segment(tmp_path, data, fragment):
    path = _write(tmp_path / "w.json", json.dumps(data))
    with pytest.raises(SubtitleError, match=str(path)) as info:
        read_subtitles(path)
    assert fragment in str(info.value)


def test_other_failures(tmp_path):
    with pytest.raises(SubtitleError, match="not found"):
        read_subtitles(tmp_path / "missing.vtt")
    with pytest.raises(SubtitleError, match="unknown subtitle format '.txt'"):
        read_subtitles(_write(tmp_path / "a.txt", "x"))
    (tmp_path / "latin.srt").write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9\n")
    with pytest.raises(SubtitleError, match=r"line 3: not UTF-8"):
        read_subtitles(tmp_path / "latin.srt")
    with pytest.raises(SubtitleError, match="no cue with text"):
        read_subtitles(_write(tmp_path / "empty.vtt", "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\n <c></c>\n"))
    with pytest.raises(SubtitleError, match="cue 0 to write: end"):
        write_subtitles(tmp_path / "o.vtt", [Cue(2.0, 1.0, "x")])
    with pytest.raises(SubtitleError, match="cue 1 to write has no text"):
        write_subtitles(tmp_path / "o.srt", [Cue(0.0, 1.0, "x"), Cue(1.0, 2.0, "  ")])
    assert not (tmp_path / "o.vtt").exists() and not (tmp_path / "o.srt").exists()
