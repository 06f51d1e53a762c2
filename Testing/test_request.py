"""One typed analysis request: the CLI's arguments and the worker's JSON give the same AnalyzeRequest, a bad
request is an InputError (never a crash), and the worker answers typed messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from BreastCMSLLib import cli
from BreastCMSLLib.errors import InputError
from BreastCMSLLib.panel.protocol import Kind, Message
from BreastCMSLLib.panel.worker import serve
from BreastCMSLLib.run import AnalyzeRequest


def test_cli_arguments_give_the_request_and_it_survives_json():
    args = cli.build_parser().parse_args(["analyze", "--t1", "t1.nrrd", "--pre", "pre.nrrd", "--post", "p1.nrrd",
                                          "p2.nrrd", "--model", "m.safetensors", "--out", "out", "--device", "cpu",
                                          "--label-fraction", "0.4"])
    request = cli.analyze_request(args)
    assert request == AnalyzeRequest(model=Path("m.safetensors"), out=Path("out"), t1=Path("t1.nrrd"),
                                     pre=Path("pre.nrrd"), post=(Path("p1.nrrd"), Path("p2.nrrd")), device="cpu",
                                     label_fraction=0.4)
    assert AnalyzeRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    assert AnalyzeRequest.for_volumes("t1.nrrd", ["pre.nrrd", "p1.nrrd", "p2.nrrd"], "phases", model="m.safetensors",
                                      out="out", device="cpu", label_fraction=0.4) == request
    subtractions = AnalyzeRequest.for_volumes(None, ["s1.nrrd", "s2.nrrd"], "subtractions", model="m", out="o")
    assert (subtractions.sub, subtractions.pre, subtractions.post, subtractions.t1) == (
        (Path("s1.nrrd"), Path("s2.nrrd")), None, (), None)


@pytest.mark.parametrize("data, message", [
    ([], "request: must be a JSON object"),
    ({"model": "m"}, "request: missing field(s) out"),
    ({"model": "m", "out": "o", "argv": ["analyze"]}, "request: unknown field(s) argv"),
    ({"model": 3, "out": "o"}, "model: must be a path"),
    ({"model": "m", "out": "o", "sub": "s1.nrrd"}, "sub: must be a list of paths"),
    ({"model": "m", "out": "o", "label_fraction": "half"}, "label fraction: must be a number"),
    ({"model": "m", "out": "o", "dicom_seg": "yes"}, "dicom_seg: must be true or false"),
])
def test_a_malformed_request_is_an_input_error(data, message):
    with pytest.raises(InputError) as raised:
        AnalyzeRequest.from_dict(data)
    assert str(raised.value).startswith(message)


def run_worker(lines: list[str]) -> list[Message]:
    """The worker's serve loop on the given request lines (in this process); the messages it sent."""
    pending, sent = list(lines), []
    serve(lambda timeout: pending.pop(0) if pending else "", sent.append, idle_timeout_s=5.0)
    return sent


def test_the_worker_reports_user_mistakes_as_user_errors(tmp_path):
    bad = Message(Kind.ANALYZE, request={"model": "m", "out": "o", "label_fraction": []}).line()
    missing = Message(Kind.ANALYZE, request=AnalyzeRequest(model=tmp_path / "none.safetensors", out=tmp_path / "out",
                                                           sub=(tmp_path / "s.nrrd",)).to_dict()).line()
    wrong_kind = Message(Kind.PROGRESS).line()
    sent = run_worker([bad, "not json\n", wrong_kind, missing])
    assert [m.kind for m in sent] == [Kind.USER_ERROR, Kind.USER_ERROR, Kind.USER_ERROR, Kind.PROGRESS,
                                      Kind.USER_ERROR]
    assert sent[0].text.startswith("label fraction: must be a number")
    assert sent[1].text.startswith("worker message: is not a protocol message")
    assert sent[2].text == "worker message: expected analyze, got progress"
    assert str(tmp_path / "none.safetensors") in sent[4].text and "\n" not in sent[4].text
    assert not (tmp_path / "out").exists()


def test_messages_round_trip():
    for message in (Message(Kind.READY), Message(Kind.PROGRESS, fraction=0.25, stage="inference"),
                    Message(Kind.DONE, summary={"probability": 0.5}), Message(Kind.CRASH, text="Traceback\n...")):
        assert Message.parse(message.line()) == message
        assert message.line().count("\n") == 1
