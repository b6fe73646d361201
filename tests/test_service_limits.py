"""The CAD service as a clinic would put it on its network (issue 20): no lost case when two processes
add the same image at once, no patient image or prediction without the key, no path of the server
in an answer, memory bounded whatever the upload, connections that cannot exhaust the server,
high-bit-depth and transparent images read right, and a clear line for a port in use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_service import copy_index, files, free_port, lesion, local_client, make_example, png

from rmnet.data.images import bit_depth
from rmnet.retrieval.index import CodeIndex
from rmnet.service.access import RedactQuery, check_exposure, is_loopback
from rmnet.service.app import build_service, create_app
from rmnet.service.cases import CaseStore
from rmnet.service.config import ServiceConfig
from rmnet.service.uploads import PixelBudget, RequestError, decode_image

KEY = "clinic-key-0123456789abcdef"


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> tuple[Path, Path]:
    return make_example(tmp_path_factory.mktemp("limits-demo"))


@pytest.fixture(scope="module")
def keyed(example, tmp_path_factory):
    """(client without credentials, service) of a service with a key, over a copy of the index."""
    demo, index = example
    index = copy_index(index, tmp_path_factory.mktemp("keyed") / "index")
    service = build_service(ServiceConfig(run=demo, index=index, api_key=f"  {KEY} ", device="cpu"))
    with local_client(create_app(service)) as client:
        yield client, service
    service.close()


def a_case_id(index: Path) -> str:
    with CodeIndex.open(index) as opened:
        return opened.items(0, 1)[0].image_id


# -- 1. no lost case: the cases folder's lock ---------------------------------------------------------


RACER = """
import sys, numpy as np
from rmnet.retrieval.index import CodeIndex
from rmnet.service.cases import CaseStore
from rmnet.service.uploads import RequestError
index, who = sys.argv[1], sys.argv[2]
store = CaseStore(index, index + "/cases")
with CodeIndex.open(index) as opened:
    store.attach_model(opened.model.fingerprint, opened.code_length)
    code = np.random.default_rng(int(who)).normal(size=opened.code_length).astype(np.float32)
print("ready", flush=True)
for line in sys.stdin:  # "round FILE": add that image, now, under this process's own id
    r, path = line.split()
    try:
        store.add(open(path, "rb").read(), ".png", code, 0, f"round{r}-by{who}", {}).result(timeout=60)
        print(201, flush=True)
    except RequestError as err:
        print(err.status, flush=True)
store.close()
"""


def racers(index: Path, n: int = 2):
    """``n`` processes that each add the image the parent names, when it names it (a light child:
    no torch), started with the test's own source on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(index), str(who)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for who in range(n)
    ]
    for child in children:
        assert child.stdout.readline().strip() == "ready"
    return children


def test_two_processes_adding_the_same_image_at_once_lose_nothing(example, tmp_path):
    """A double submit under several processes: one 201 and one 409 per round, and the 201 case's
    image is on disk, byte for byte (without the lock the loser deleted the winner's file)."""
    demo, index = example
    index = copy_index(index, tmp_path / "index")
    rounds, images = 12, {}
    children = racers(index)
    try:
        for r in range(rounds):
            images[r] = tmp_path / f"round{r}.png"
            images[r].write_bytes(png(lesion(1000 + r)))
            for child in children:  # both at once: they block on reading this line
                child.stdin.write(f"{r} {images[r]}\n")
                child.stdin.flush()
            outcomes = sorted(int(child.stdout.readline()) for child in children)
            assert outcomes == [201, 409], (r, outcomes)
    finally:
        for child in children:
            child.stdin.close()
            child.wait(timeout=30)
    with CodeIndex.open(index) as opened:
        added = [item for item in opened.items() if item.image_id.startswith("round")]
    assert len(added) == rounds
    lost = [item.image_id for item in added if not Path(item.path).is_file()]
    assert lost == []
    for item in added:
        r = int(item.image_id[len("round") :].split("-")[0])
        assert Path(item.path).read_bytes() == images[r].read_bytes()


KILLED_MID_ADD = """
import sys, time, numpy as np
from rmnet.retrieval.index import CodeIndex
from rmnet.service.cases import CaseStore
CodeIndex.add = lambda *a, **k: (print("writing", flush=True), time.sleep(600))  # killed before committing
store = CaseStore(sys.argv[1], sys.argv[1] + "/cases")
with CodeIndex.open(sys.argv[1]) as opened:
    store.attach_model(opened.model.fingerprint, opened.code_length)
    code = np.ones(opened.code_length, np.float32)
store.add(open(sys.argv[2], "rb").read(), ".png", code, 0, "never-committed", {}).result()
"""


def test_image_files_of_a_process_killed_mid_add_are_removed_on_start(example, tmp_path):
    demo, index = example
    index = copy_index(index, tmp_path / "index")
    kept = png(lesion(50))
    store = CaseStore(index, index / "cases")
    with CodeIndex.open(index) as opened:
        store.attach_model(opened.model.fingerprint, opened.code_length)
        code = np.ones(opened.code_length, np.float32)
    store.add(kept, ".png", code, 1, "committed-1", {}).result(timeout=30)
    store.close()
    orphan = tmp_path / "orphan.png"
    orphan.write_bytes(png(lesion(51)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MID_ADD, str(index), str(orphan)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout.readline().strip() == "writing"  # its image file is written, the lock held
    assert len(list((index / "cases").glob("*.png"))) == 2
    child.send_signal(signal.SIGKILL)  # kill -9 before the commit
    child.wait(timeout=30)
    (index / "cases" / ".unfinished.png.999.tmp").write_bytes(b"half")  # an interrupted write

    reopened = CaseStore(index, index / "cases")  # the lock died with the process
    try:
        remaining = sorted(p.name for p in (index / "cases").iterdir() if p.name != ".lock")
        assert len(remaining) == 1 and (index / "cases" / remaining[0]).read_bytes() == kept
        assert reopened.get("never-committed") is None and reopened.get("committed-1") is not None
    finally:
        reopened.close()


# -- 2. access: the key, the hosts, no server paths ---------------------------------------------------


def test_with_a_key_every_patient_or_prediction_endpoint_needs_it(keyed):
    client, service = keyed
    case = a_case_id(service.config.index)
    image = files(png(lesion(3)))
    requests = {
        "predict": lambda h: client.post("/api/predict", files=image, headers=h),
        "search": lambda h: client.post("/api/search?k=3", files=image, headers=h),
        "explain": lambda h: client.post("/api/explain", files=image, headers=h),
        "case image": lambda h: client.get(f"/api/cases/{case}/image", headers=h),
        "thumbnail": lambda h: client.get(f"/api/cases/{case}/image?size=32", headers=h),
        "add": lambda h: client.post(
            "/api/cases", files=image, data={"label": "lobed", "id": "x-1"}, headers=h
        ),
    }
    for name, send in requests.items():
        refused = send({})
        assert refused.status_code == 401, (name, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer" and "Bearer" in refused.json()["detail"]
        assert case not in refused.text
    assert requests["predict"]({"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert requests["search"]({"X-API-Key": KEY}).json()["results"][0]["id"]
    assert requests["case image"]({"Authorization": f"bearer   {KEY} "}).status_code == 200  # stripped
    assert requests["add"]({"Authorization": f"Bearer {KEY}"}).status_code == 201
    # The page and the OpenAPI schema say nothing about a patient: no key needed.
    assert client.get("/").status_code == 200 and client.get("/openapi.json").status_code == 200


def test_healthz_says_only_that_it_is_up_without_the_key(keyed):
    client, _ = keyed
    assert client.get("/healthz").json() == {"status": "ok", "key_required": True}
    full = client.get("/healthz", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert full["index"]["count"] >= 24 and full["writes"] == "enabled" and full["key_required"] is True
    assert client.get("/healthz", headers={"Authorization": "Bearer not-the-key-at-all"}).status_code == 403


def test_no_answer_names_a_path_on_the_server(keyed, example):
    client, service = keyed
    auth = {"Authorization": f"Bearer {KEY}"}
    root = str(example[0].resolve())
    (service.store.cases_dir).mkdir(exist_ok=True)
    answers = [
        client.get("/healthz", headers=auth),
        client.post("/api/predict", files=files(png(lesion(4))), headers=auth),
        client.get("/api/cases/no-such-case/image", headers=auth),
        client.get("/no/such/page", headers=auth),
        client.post("/api/predict", files=files(b"not an image"), headers=auth),
    ]
    # A case whose file went missing: 404 without its path.
    with CodeIndex.open(service.config.index) as opened:
        from rmnet.retrieval.index import IndexItem

        item = IndexItem("gone-1", 0, str(Path(root) / "gone.png"), "hash-of-gone", {})
        code = np.ones((1, opened.code_length), np.float32)
        opened.add(code, [item], model_fingerprint=opened.model.fingerprint)
    answers.append(client.get("/api/cases/gone-1/image", headers=auth))
    assert answers[-1].status_code == 404
    for answer in answers:
        assert root not in answer.text and "/tmp/" not in answer.text, answer.text


def test_repeated_wrong_keys_from_one_client_get_429_with_retry_after(example, tmp_path):
    demo, index = example
    config = ServiceConfig(
        run=demo, index=copy_index(index, tmp_path / "index"), api_key=KEY, device="cpu", auth_failures=3
    )
    service = build_service(config)
    try:
        with local_client(create_app(service)) as client:
            wrong = {"Authorization": "Bearer wrong-key-wrong-key-wrong"}
            statuses = [client.get("/healthz", headers=wrong).status_code for _ in range(3)]
            assert statuses == [403, 403, 403]
            blocked = client.post("/api/predict", files=files(png(lesion(5))), headers=wrong)
            assert blocked.status_code == 429 and 1 <= int(blocked.headers["retry-after"]) <= 60
            right = {"Authorization": f"Bearer {KEY}"}  # the client is blocked until the window passes
            assert client.get("/healthz", headers=right).status_code == 429
    finally:
        service.close()


def test_a_key_in_the_query_string_is_refused_and_never_logged(keyed):
    client, _ = keyed
    refused = client.get(f"/healthz?api_key={KEY}")
    assert refused.status_code == 400 and "Authorization: Bearer" in refused.json()["detail"]
    assert KEY not in refused.text
    assert client.post(f"/api/search?k=3&token={KEY}", files=files(png(lesion(6)))).status_code == 400
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/api/search?k=3&api_key={KEY}&x=1", "1.1", 400), None,
    )  # fmt: skip
    assert RedactQuery().filter(record)
    assert KEY not in record.getMessage() and "k=3&api_key=REDACTED&x=1" in record.getMessage()


def test_short_blank_or_missing_keys_and_exposure_are_refused_at_start(monkeypatch):
    for bad in ("x", "   ", "short-key-15char"[:15]):
        with pytest.raises(ValueError, match="at least 16 characters"):
            _ = ServiceConfig(run="r", index="i", api_key=bad).resolved_api_key
    monkeypatch.setenv("RMNET_API_KEY", f"{KEY} \n")  # a trailing space or newline from a file
    assert ServiceConfig(run="r", index="i").resolved_api_key == KEY
    monkeypatch.setenv("RMNET_API_KEY", "")
    assert ServiceConfig(run="r", index="i").resolved_api_key is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("clinic.lan")
    with pytest.raises(ValueError, match="RMNET_API_KEY"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", KEY)
    check_exposure("127.0.0.1", None)


def test_the_command_line_refuses_exposure_without_a_key_and_a_port_in_use(example, monkeypatch, capsys):
    from rmnet.cli import main

    demo, index = example
    monkeypatch.setenv("RMNET_API_KEY", "")
    assert main(["serve", str(demo), "--index", str(index), "--host", "0.0.0.0"]) == 1
    assert "listens beyond this machine" in capsys.readouterr().err
    monkeypatch.setenv("RMNET_API_KEY", "too-short")
    assert main(["serve", str(demo), "--index", str(index)]) == 1
    assert "at least 16 characters" in capsys.readouterr().err
    monkeypatch.setenv("RMNET_API_KEY", "")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(demo), "--index", str(index), "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"rmnet: error: port {port} is in use: pass --port N (another free port)"
    assert "open http" not in captured.out


def test_only_allowed_host_names_are_answered(example, tmp_path):
    from fastapi.testclient import TestClient

    demo, index = example
    service = build_service(ServiceConfig(run=demo, index=index, api_key="", device="cpu"))
    try:
        app = create_app(service)
        assert TestClient(app, base_url="http://127.0.0.1:8000").get("/healthz").status_code == 200
        assert TestClient(app, base_url="http://[::1]:8000").get("/healthz").status_code == 200
        rebinding = TestClient(app, base_url="http://attacker.example:8000").get("/healthz")
        assert rebinding.status_code == 400  # DNS rebinding: a page of another site calling this server
    finally:
        service.close()
    config = ServiceConfig(run=demo, index=index, api_key="", device="cpu", allowed_hosts=("cad.clinic.lan",))
    service = build_service(config)
    try:
        app = create_app(service)
        assert TestClient(app, base_url="http://cad.clinic.lan").get("/healthz").status_code == 200
        assert TestClient(app, base_url="http://localhost").get("/healthz").status_code == 400
    finally:
        service.close()
    assert ServiceConfig(run="r", index="i", host="10.0.0.5").resolved_allowed_hosts == (
        "localhost", "127.0.0.1", "::1", "10.0.0.5",
    )  # fmt: skip


# -- 3. memory: the pixel budget and early reduction --------------------------------------------------


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def peak_rss() -> Iterator[dict]:
    """The process's resident memory before, and its peak while the block runs (sampled every 2 ms)."""
    result = {"before": resident_mb(), "peak": 0.0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            result["peak"] = max(result["peak"], resident_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()


def test_concurrent_49_megapixel_uploads_stay_within_the_memory_budget(example, tmp_path):
    """4 clients at once upload a 6 KB PNG of 7000 × 7000 1-bit pixels (before: 460 MB each)."""
    demo, index = example
    config = ServiceConfig(run=demo, index=index, api_key="", device="cpu", decode_wait_s=30)
    service = build_service(config)
    bomb = png(Image.new("1", (7000, 7000)))
    assert len(bomb) < 10_000
    try:
        with local_client(create_app(service)) as client:
            assert client.post("/api/predict", files=files(bomb)).status_code == 200  # warm: first-call costs
            with peak_rss() as rss, ThreadPoolExecutor(4) as pool:
                statuses = list(
                    pool.map(lambda _: client.post("/api/predict", files=files(bomb)).status_code, range(4))
                )
            assert statuses == [200] * 4
            assert service.budget.peak <= 64_000_000  # one 49-megapixel decode at a time
            grown = rss["peak"] - rss["before"]
            assert grown < 250, f"resident memory grew by {grown:.0f} MB"  # ~2 bytes per pixel of one image
    finally:
        service.close()


def test_over_the_decode_budget_the_service_answers_503_with_retry_after(example):
    demo, index = example
    service = build_service(ServiceConfig(run=demo, index=index, api_key="", device="cpu", decode_wait_s=0.2))
    try:
        with local_client(create_app(service)) as client:
            with service.budget.reserve(service.budget.pixels - 100):  # other uploads hold the budget
                busy = client.post("/api/predict", files=files(png(lesion(7))))
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "memory budget" in busy.json()["detail"]
            assert client.post("/api/predict", files=files(png(lesion(7)))).status_code == 200
            assert client.get("/healthz").json()["limits"]["decode"]["refused"] == 1
    finally:
        service.close()


def test_a_pixel_budget_lets_one_image_of_any_size_through_and_waits_for_room():
    budget = PixelBudget(100, wait_s=5)
    with budget.reserve(10**9):  # larger than the budget (max_pixels never is): alone, it fits
        assert budget.in_use == 100
    with budget.reserve(60):
        waited = []

        def second() -> None:
            begin = time.monotonic()
            with budget.reserve(60):
                waited.append(time.monotonic() - begin)

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        assert not waited  # it waits for room
    thread.join(timeout=5)
    assert waited and waited[0] >= 0.25 and budget.in_use == 0 and budget.peak == 100
    impatient = PixelBudget(100, wait_s=0.05)
    with impatient.reserve(60), pytest.raises(RequestError) as refused:
        with impatient.reserve(60):
            pass
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}


def test_large_images_are_reduced_before_conversion():
    decoded = decode_image(png(Image.new("1", (7000, 5000), 1)), max_pixels=50_000_000)
    assert decoded.image.size == (1750, 1250) and decoded.image.mode == "RGB"  # factor 4: short edge ≥ 1024
    assert (decoded.width, decoded.height) == (7000, 5000)  # the stored size is reported
    assert np.asarray(decoded.image).min() == 255
    jpeg = png(Image.new("RGB", (4096, 3072), (200, 10, 10)), "JPEG")
    assert decode_image(jpeg, max_pixels=50_000_000).image.size == (2048, 1536)  # libjpeg's 1/2 scale


# -- 4. connections: a deadline for headers, a cap with eviction --------------------------------------


@contextlib.contextmanager
def uvicorn_in_a_thread(service, **settings) -> Iterator[str]:
    """The service in uvicorn with ``rmnet serve``'s options (the guarded protocol among them)."""
    import dataclasses

    import uvicorn

    from rmnet.service.connections import GuardedHTTPProtocol
    from rmnet.service.server import uvicorn_options

    config = dataclasses.replace(service.config, port=free_port(), **settings)
    GuardedHTTPProtocol.configure(
        header_timeout=config.header_timeout, max_connections=config.max_connections
    )
    options = uvicorn_options(config, "warning")
    server = uvicorn.Server(uvicorn.Config(create_app(service), **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    scheme = "https" if config.ssl_certfile else "http"
    try:
        yield f"{scheme}://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_300_idle_partial_connections_do_not_stop_healthz(example):
    import httpx

    demo, index = example
    service = build_service(ServiceConfig(run=demo, index=index, api_key="", device="cpu"))
    try:
        with uvicorn_in_a_thread(service, max_connections=100, header_timeout=2.0) as url:
            port = int(url.rsplit(":", 1)[1])
            held = []
            try:
                for _ in range(300):
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and nothing more
                    held.append(s)
                started = time.monotonic()
                health = httpx.get(url + "/healthz", timeout=5)
                assert health.status_code == 200 and health.json()["status"] == "ok"
                assert time.monotonic() - started < 2.0
                # The oldest partial connections were closed to make room (EOF), the newest still wait.
                held[0].settimeout(5)
                assert held[0].recv(1) == b""
                # After the header deadline, the rest are closed too.
                held[-1].settimeout(5)
                assert held[-1].recv(1) == b""
            finally:
                for s in held:
                    s.close()
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    finally:
        service.close()


def test_a_stalled_upload_gets_408(example):
    demo, index = example
    service = build_service(ServiceConfig(run=demo, index=index, api_key="", device="cpu", body_timeout=0.5))
    try:
        with uvicorn_in_a_thread(service) as url:
            port = int(url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(
                    b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
                    b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n"
                )
                answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and b"stalled" in answer
    finally:
        service.close()


def test_tls_by_uvicorn_with_the_certificate_given(example, tmp_path):
    import httpx

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    demo, index = example
    service = build_service(ServiceConfig(run=demo, index=index, api_key="", device="cpu"))
    try:
        with uvicorn_in_a_thread(service, ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
            assert url.startswith("https://")
            trusted = ssl.create_default_context(cafile=str(cert))
            assert httpx.get(url + "/healthz", verify=trusted, timeout=10).json()["status"] == "ok"
    finally:
        service.close()
    with pytest.raises(ValueError, match="both"):
        ServiceConfig(run="r", index="i", ssl_certfile=str(cert))


# -- 6. images: bit depth and transparency --------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_images_are_scaled_by_their_bit_depth_not_clipped(fmt):
    grey = np.zeros((8, 32), np.uint16)
    grey[:, 8:16], grey[:, 16:24], grey[:, 24:] = 1000, 32768, 65535
    image = np.asarray(decode_image(png(Image.fromarray(grey), fmt), max_pixels=10**6).image)
    assert image[0, [0, 8, 16, 24], 0].tolist() == [0, 4, 128, 255]  # v · 255 / 65535, rounded
    twelve_bit = (np.arange(32, dtype=np.uint16) * 132)[None].repeat(8, 0)  # 0 … 4092: a 12-bit sensor
    image = np.asarray(decode_image(png(Image.fromarray(twelve_bit), fmt), max_pixels=10**6).image)
    assert image[0, -1, 0] == round(4092 * 255 / 4095) and image[0, 16, 0] == round(2112 * 255 / 4095)
    assert [bit_depth(v) for v in (255, 256, 1023, 4095, 4096, 65535, 70000)] == [8, 10, 10, 12, 14, 16, 32]


def test_transparent_pixels_are_composited_onto_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)  # hidden colour values
    rgba[:, 2:, 3] = 255  # right half opaque
    rgba[0, 0, 3] = 128  # one half-transparent pixel
    image = np.asarray(decode_image(png(Image.fromarray(rgba, "RGBA")), max_pixels=100).image)
    assert image[1, 0].tolist() == [255, 255, 255] and image[1, 3].tolist() == [10, 200, 30]
    assert image[0, 0].tolist() == pytest.approx([132, 227, 142], abs=1)  # half of each
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 250, 0, 0])
    image = np.asarray(decode_image(png(palette, transparency=0), max_pixels=100).image)
    assert image[0].tolist() == [[255, 255, 255], [250, 0, 0]]
    grey_alpha = Image.fromarray(np.zeros((2, 2, 2), np.uint8), "LA")
    assert np.asarray(decode_image(png(grey_alpha), max_pixels=100).image).min() == 255
