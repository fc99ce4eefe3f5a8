"""The status page (`GET /`), its login (`POST /session`) and the API docs (`GET /docs`) on a real
Pod with API_TOKEN: first over plain HTTP (what a browser without the token gets, the cookie's
attributes, that it works like the token and is not the token), then in a real headless
Chromium (Debian's chromium + chromium-driver, scripts/install_test_browser.sh): the token is
typed into the form, the rendered page is checked and screenshotted, and /docs renders the
operations of /openapi.json."""
import re
import shutil
import time

import pytest

from tests import raw_http, workflows
from tests.http_server import LocalServer, static
from tests.pod_process import start_pod

TOKEN = "status-page-token-" + "x7Q2" * 8
BEARER = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def model_server():
    with LocalServer() as server:
        server.route("/status-lora.safetensors", static(b"S" * 200_000, content_type="application/octet-stream"))
        yield server


@pytest.fixture(scope="module")
def pod(tmp_path_factory, model_server):
    pod = start_pod(tmp_path_factory.mktemp("status-page"), env={"API_TOKEN": TOKEN})
    try:
        status, result = pod.request("POST", "/run", {"workflow": workflows.image(color=77)}, headers=BEARER)
        assert status == 200, result
        pod.extra["job_id"] = result["job_id"]
        status, queued = pod.request("POST", "/download", {"url": model_server.url + "/status-lora.safetensors",
                                                           "type": "loras"}, headers=BEARER)
        assert status == 202, queued
        yield pod
    finally:
        pod.stop()


def login(pod, headers=None):
    """POST /session with the right token: (status, body, the Set-Cookie header)."""
    status, body, resp_headers = raw_http.post_json(pod.api_port, "/session", {"token": TOKEN}, headers=headers)
    return status, body, resp_headers.get("Set-Cookie")


def cookie_pair(set_cookie: str) -> str:
    return set_cookie.split(";")[0].strip()


def test_without_the_token_the_page_is_only_the_login_form(pod):
    status, page, headers = raw_http.request(pod.api_port, "GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'id="login"' in page and 'id="dashboard"' in page
    # The page is a shell: no job, no program, no path; the data needs the token.
    assert pod.extra["job_id"] not in page and "comfyui" not in page and str(pod.root) not in page
    # The token input has no name: a form sent without JavaScript carries no token anywhere.
    token_input = re.search(r"<input[^>]*id=\"token\"[^>]*>", page, re.S).group(0)
    assert "name=" not in token_input
    assert re.search(r'<form[^>]*method="post"', page)
    assert raw_http.request(pod.api_port, "GET", "/jobs")[0] == 401
    assert raw_http.request(pod.api_port, "GET", "/downloads")[0] == 401
    status, health, _ = raw_http.request(pod.api_port, "GET", "/healthz")
    assert set(health) == {"ok", "server_public_key_b64"}


def test_wrong_token_is_401_and_sets_no_cookie(pod):
    status, body, headers = raw_http.post_json(pod.api_port, "/session", {"token": TOKEN + "x"})
    assert (status, body["error"]) == (401, "unauthorized") and headers.get("Set-Cookie") is None
    status, body, _ = raw_http.post_json(pod.api_port, "/session", {"token": "é" * 40})  # non-ASCII: no 500
    assert (status, body["error"]) == (401, "unauthorized")
    status, body, _ = raw_http.post_json(pod.api_port, "/session", {"token": 5})
    assert (status, body["error"]) == (400, "invalid_payload:token")
    # A form post (what a page of another site can send without asking) is refused unread.
    status, body, _ = raw_http.request(pod.api_port, "POST", "/session", body=f"token={TOKEN}".encode(),
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["error"]) == (415, "unsupported_media_type")


def test_the_cookie_works_like_the_token_and_is_not_the_token(pod):
    status, body, set_cookie = login(pod)
    assert status == 200 and body["session"] is True and body["expires"] > time.time() + 3600
    attributes = [part.strip() for part in set_cookie.split(";")]
    assert attributes[0].startswith("appliance_session=")
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attributes) and "Secure" not in attributes
    assert TOKEN not in set_cookie and TOKEN[-8:] not in set_cookie
    cookie = {"Cookie": cookie_pair(set_cookie)}

    status, listing, _ = raw_http.request(pod.api_port, "GET", "/jobs", headers=cookie)
    assert status == 200 and pod.extra["job_id"] in {job["job_id"] for job in listing["jobs"]}
    status, health, _ = raw_http.request(pod.api_port, "GET", "/healthz", headers=cookie)
    assert status == 200 and "comfyui" in health["programs"]  # the details, as with the header
    status, result, _ = raw_http.post_json(pod.api_port, "/run", {"workflow": workflows.image(color=78)},
                                           headers=cookie)
    assert status == 200 and result["outputs"], result

    value = cookie_pair(set_cookie).split("=", 1)[1]
    expires, mac = value.split(".")
    forged = [f"{int(expires) + 1}.{mac}", f"{expires}.{mac[:-1]}0" if mac[-1] != "0" else f"{expires}.{mac[:-1]}1",
              f"{int(time.time()) - 1}.{mac}", TOKEN, "", "x" * 5000]
    for bad in forged:
        status, body, _ = raw_http.request(pod.api_port, "GET", "/jobs", headers={"Cookie": f"appliance_session={bad}"})
        assert (status, body["error"]) == (401, "unauthorized"), bad[:40]


def test_over_https_the_cookie_is_secure_and_host_only(pod):
    status, _, set_cookie = login(pod, headers={"X-Forwarded-Proto": "https"})
    attributes = [part.strip() for part in set_cookie.split(";")]
    assert status == 200 and attributes[0].startswith("__Host-appliance_session=")
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Secure"} <= set(attributes)
    assert not any(a.lower().startswith("domain") for a in attributes)
    assert raw_http.request(pod.api_port, "GET", "/jobs", headers={"Cookie": cookie_pair(set_cookie)})[0] == 200


def test_logout_expires_the_cookie(pod):
    status, body, headers = raw_http.request(pod.api_port, "DELETE", "/session")
    assert status == 200 and body == {"session": False}
    set_cookie = headers["Set-Cookie"]
    assert set_cookie.startswith("appliance_session=") and "1970" in set_cookie


def test_pages_and_files_have_their_types_and_cache_headers(pod):
    expected = {"/": "text/html", "/status/app.js": "text/javascript", "/status/style.css": "text/css",
                "/docs": "text/html", "/docs/docs.js": "text/javascript", "/docs/swagger-ui.css": "text/css",
                "/docs/swagger-ui-bundle.js": "text/javascript"}
    for path, content_type in expected.items():
        status, _, headers = raw_http.request(pod.api_port, "GET", path)
        assert status == 200 and headers["Content-Type"] == f"{content_type}; charset=utf-8", path
        assert headers["Cache-Control"] == "no-cache" and headers["X-Content-Type-Options"] == "nosniff"
        etag = headers["ETag"]
        status, _, again = raw_http.request(pod.api_port, "GET", path, headers={"If-None-Match": etag})
        assert status == 304 and again["ETag"] == etag, path
    for page in ("/", "/docs"):
        csp = raw_http.request(pod.api_port, "GET", page)[2]["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    _, _, headers = raw_http.request(pod.api_port, "GET", "/docs/swagger-ui-bundle.js",
                                     headers={"Accept-Encoding": "gzip, br"})
    assert headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) < 600_000
    for path in ("/status/../guard.py", "/status/%2e%2e%2fguard.py", "/status/index.html", "/docs/index.html",
                 "/docs/swagger-ui-bundle.js.map", "/status/"):
        status, body, _ = raw_http.request(pod.api_port, "GET", path)
        assert status == 404 and body["error"] == "not_found", path


def test_the_pages_name_nothing_outside_this_origin(pod):
    for page in ("/", "/docs"):
        html = raw_http.request(pod.api_port, "GET", page)[1]
        links = re.findall(r'(?:src|href|action)="([^"]*)"', html)
        assert links and all(link.startswith("/") and not link.startswith("//") for link in links), links
        assert not re.search(r"https?:|//[a-z]", re.sub(r"<!--.*?-->", "", html, flags=re.S)), page
    docs_js = raw_http.request(pod.api_port, "GET", "/docs/docs.js")[1]
    assert 'url: "/openapi.json"' in docs_js and "validatorUrl: null" in docs_js


# ---- a real browser ------------------------------------------------------------------------

@pytest.fixture
def browser(tmp_path):
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"no {' and no '.join(missing)} here: run scripts/install_test_browser.sh as root "
                    "(Debian's chromium and chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver"), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what, timeout=20):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=what)


def console_problems(driver) -> list[str]:
    """Errors the page met (CSP violations, script errors), less the 401s the login is about."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "status of 401" not in entry["message"]]


def requested(driver) -> list[str]:
    return [driver.current_url] + driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")


# The page redraws every 2 s, so it is read in one script: elements found one by one go stale.
SNAPSHOT_JS = """
const text = (id) => document.getElementById(id).innerText;
const rows = (id) => Object.fromEntries([...document.querySelectorAll('#' + id + ' tbody tr')].map(tr => [
  tr.cells[0].innerText,
  {cells: [...tr.cells].map(td => td.innerText),
   progress: [...tr.querySelectorAll('progress')].map(p => p.hasAttribute('value') ? p.value : null)}]));
return {login: !document.getElementById('login').hidden, dashboard: !document.getElementById('dashboard').hidden,
        error: text('login-error'), health: text('health'), gpus: text('gpus'), version: text('version'),
        jobs: rows('jobs'), programs: rows('programs'), downloads: rows('downloads'), backends: rows('backends')};
"""


def test_status_page_in_chromium(browser, pod, tmp_path):
    from selenium.webdriver.common.by import By

    status, running = pod.request("POST", "/run", {"workflow": workflows.sleep_then_save(8, steps=40), "async": True},
                                  headers=BEARER)
    assert status == 202, running
    job_id, download = pod.extra["job_id"], "status-lora.safetensors"
    browser.get(pod.url + "/")
    page = wait_for(browser, lambda d: (snap := d.execute_script(SNAPSHOT_JS))["login"] and snap, "the login form")
    assert not page["dashboard"] and page["jobs"] == {}

    browser.find_element(By.ID, "token").send_keys("not the token")
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    wait_for(browser, lambda d: d.execute_script(SNAPSHOT_JS)["error"] == "Wrong token.", "the refusal")

    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()

    def rendered(d):
        snap = d.execute_script(SNAPSHOT_JS)
        return (snap["dashboard"] and job_id in snap["jobs"] and running["job_id"] in snap["jobs"]
                and "comfyui" in snap["programs"] and download in snap["downloads"] and snap)
    page = wait_for(browser, rendered, "health, jobs, programs and downloads")
    assert not page["login"]
    assert "health\nok" in page["health"] and "ComfyUI\nready" in page["health"], page["health"]
    job = page["jobs"][job_id]
    assert job["cells"][1] == "succeeded" and job["cells"][2].strip() == "100 %" and job["progress"] == [1]
    assert re.fullmatch(r"\d+\.\d+ s", job["cells"][5]), job
    for program in ("api", "comfyui", "gpuwatch", "modelsync", "logforward"):
        assert page["programs"][program]["cells"][1] in ("RUNNING", "STARTING"), page["programs"]
    assert "GPU 0: NVIDIA H100 80GB HBM3" in page["gpus"]  # the fake nvidia-smi's recorded H100
    assert page["version"].startswith("appliance ")
    # A one-GPU Pod has one backend, the `comfyui` program, serving; its GPU and runtime as /healthz says.
    backend = pod.request("GET", "/healthz", headers=BEARER)[1]["backends"][0]
    assert list(page["backends"]) == ["comfyui"], page["backends"]
    assert page["backends"]["comfyui"]["cells"][1:5] == [
        backend["gpu"] or "not pinned", backend["runtime"] or "", "ready", "yes"], page["backends"]

    # It keeps itself up to date: the running job and the download move on without a reload.
    def finished(d):
        snap = d.execute_script(SNAPSHOT_JS)
        return (snap["jobs"][running["job_id"]]["cells"][1] == "succeeded"
                and snap["downloads"][download]["cells"][2] == "done" and snap)
    page = wait_for(browser, finished, "the async job and the download to finish", timeout=60)
    assert page["downloads"][download]["progress"] == [1]
    assert "200.0 KB / 200.0 KB" in page["downloads"][download]["cells"][3]

    shot = tmp_path / "status-page.png"
    browser.save_screenshot(str(shot))
    print(f"\nstatus page screenshot: {shot} ({shot.stat().st_size} bytes)")

    urls = requested(browser)
    assert all(url.startswith(pod.url + "/") for url in urls), urls
    assert not any(TOKEN in url for url in urls)
    assert browser.get_cookie("appliance_session")["httpOnly"] is True
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it
    assert console_problems(browser) == []

    # After logging out the page is the form again.
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, lambda d: d.execute_script(SNAPSHOT_JS)["login"], "the form after logout")
    assert browser.get_cookie("appliance_session") is None


def test_docs_render_every_operation_in_chromium(browser, pod, tmp_path):
    from selenium.webdriver.common.by import By

    status, doc = pod.request("GET", "/openapi.json")
    assert status == 200
    operations = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops if method != "parameters"}
    browser.get(pod.url + "/docs")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == len(operations),
             f"{len(operations)} operations rendered")
    shown = {(block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").text,
              block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path"))
             for block in browser.find_elements(By.CSS_SELECTOR, ".opblock")}
    assert shown == operations
    assert "ComfyUI appliance Pod API" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    shot = tmp_path / "docs.png"
    browser.save_screenshot(str(shot))
    print(f"\ndocs screenshot: {shot}")
    urls = requested(browser)
    assert all(url.startswith(pod.url + "/") for url in urls), urls
    assert console_problems(browser) == []
