"""osmf-serving outside the process that built it: in a clean Python, and behind MLflow's own
scoring server (`mlflow models serve`), as the ad server calls it."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from osmf_lib import tracking
from osmf_lib.config import Config
from osmf_lib.paag.model import USER_ATTRIBUTES
from osmf_lib.serving.model import ServingNight
from osmf_lib.serving.registry import MODEL_NAME, log_serving, start_scoring_server
from osmf_lib.tables import ASSIGNED, MEMBER, UNKNOWN_PRODUCT

SERVER_START_SECONDS = 180


@pytest.fixture(scope="module")
def registered(night: ServingNight, make_cfg: Callable[..., Config], tmp_path_factory) -> Config:
    """The night's model logged and registered as the champion of its own MLflow store."""
    store = tmp_path_factory.mktemp("serving-mlflow")
    cfg = make_cfg(f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db", f"mlflow.artifact_root={store}/artifacts")
    tracking.configure(cfg)
    with mlflow.start_run():
        uri = log_serving(night, _requests())
    tracking.promote(MODEL_NAME, tracking.register(uri, MODEL_NAME))
    return cfg


def _requests() -> pd.DataFrame:
    """A member by id, a newcomer, a user with no attributes at all, and an unknown product."""
    rows = pd.DataFrame(
        [
            {"product_id": "p-two", "user_id": "u000", "gender": "female", "interests": ["home"]},
            {"product_id": "p-two", "user_id": "someone-new", "gender": "male", "age_band": "age_band-1"},
            {"product_id": "p-two"},
            {"product_id": "p-nobody-sells", "user_id": "u001"},
        ]
    ).reindex(columns=["product_id", "user_id", *USER_ATTRIBUTES])
    # As a JSON decoder hands them over: None where a key is missing, never a column of NaN.
    return rows.astype(object).where(rows.notna(), None)


def test_the_pyfunc_answers_in_a_clean_python_as_in_process(
    registered: Config, night: ServingNight, tmp_path: Path, predict_in_clean_python
) -> None:
    mlflow.set_tracking_uri(registered.mlflow.tracking_uri)
    model = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@champion", dst_path=str(tmp_path / "m")))
    predicted, osmf_files = predict_in_clean_python(model, _requests(), tmp_path)
    pd.testing.assert_frame_equal(predicted, night.assign(_requests()), check_dtype=False)
    assert predicted["reason"].tolist() == [MEMBER, ASSIGNED, ASSIGNED, UNKNOWN_PRODUCT]
    assert osmf_files and all(Path(f).is_relative_to(model / "code" / "osmf_lib") for f in osmf_files)


@pytest.fixture(scope="module")
def scoring_server(registered: Config, free_port, tmp_path_factory) -> Iterator[str]:
    """`mlflow models serve -m models:/osmf-serving@champion --env-manager local` on a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    server = start_scoring_server(registered.mlflow.tracking_uri, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            assert server.poll() is None, f"the scoring server exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no answer on {url}/ping: {log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_the_scoring_server_places_members_newcomers_and_unknown_products(
    scoring_server: str, night: ServingNight
) -> None:
    rows = _requests()
    records = [{k: v for k, v in row.items() if isinstance(v, list) or pd.notna(v)} for row in rows.to_dict("records")]
    status, answer = _post(scoring_server, {"dataframe_records": records})
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])
    expected = night.assign(rows)
    assert served["reason"].tolist() == [MEMBER, ASSIGNED, ASSIGNED, UNKNOWN_PRODUCT]
    assert served["group_id"].tolist()[:3] == expected["group_id"].tolist()[:3]
    assert served["creative_id"].tolist()[:3] == expected["creative_id"].tolist()[:3]
    assert served.loc[3, ["group_id", "creative_id"]].isna().all()
    assert (served["groups_ds"] == "2026-11-03").all() and (served["paag_version"] == "osmf-paag/1").all()


def test_the_scoring_server_refuses_a_request_without_a_product(scoring_server: str) -> None:
    status, answer = _post(scoring_server, {"dataframe_records": [{"user_id": "u000", "gender": "female"}]})
    assert status == 400 and "product_id" in json.dumps(answer)
