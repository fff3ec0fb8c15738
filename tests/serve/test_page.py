"""The chat page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
send a message, see the reply stream in, reload, resume the session, continue it, fork it."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.serve.server_process import KEYS

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,800",
)


def find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"none of {names} found: install Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver; .ci/run does)"
    )


@pytest.fixture
def browser():
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ssmkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = find("chromium", "chromium-browser")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(find("chromedriver")), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, script: str, *args, timeout: float = 120.0):  # generous: a loaded 2-core machine
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(script, *args)
    )


def send(driver, text: str) -> dict:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()
    wait_for(
        driver,
        "const m = document.querySelectorAll('.msg.assistant'); "
        "return m.length && m[m.length - 1].dataset.done === 'true';",
    )
    return driver.execute_script(
        "const m = [...document.querySelectorAll('.msg.assistant')].pop();"
        "return {text: m.querySelector('.text').textContent, chunks: Number(m.dataset.chunks),"
        " error: document.getElementById('error').textContent};"
    )


def page_messages(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.msg .text')].map(e => e.textContent);"
    )


def test_chat_page_streams_reloads_resumes_forks(server, browser):
    browser.get(server.url + "/")
    browser.execute_script("localStorage.setItem('ssmkit-key', arguments[0]);", KEYS[1])
    browser.refresh()
    wait_for(browser, "return document.body.dataset.ready === 'true';")

    first = send(browser, "Hello from the browser")
    assert first["error"] == ""
    assert first["text"] and first["chunks"] > 1  # streamed in several pieces
    sid = browser.execute_script("return new URLSearchParams(location.hash.slice(1)).get('s');")
    assert sid and sid.startswith("sess_")

    browser.refresh()  # the session comes back from the server
    wait_for(browser, "return document.body.dataset.ready === 'true';")
    assert page_messages(browser) == ["Hello from the browser", first["text"]]
    listed = browser.execute_script(
        "return [...document.querySelectorAll('#sessions li')].map(li => "
        "[li.dataset.id, li.querySelector('.sizes').textContent]);"
    )
    sizes = dict(listed)[sid]
    assert "state" in sizes and "KV cache" in sizes

    second = send(browser, "And again")
    assert second["text"] and second["error"] == ""
    c = server.client(KEYS[1])
    info = c.get(f"/sessions/{sid}", cast_to=object)
    assert info["turns"] == 2  # the reloaded page continued the same session
    assert [m["content"] for m in info["messages"]] == [
        "Hello from the browser",
        first["text"],
        "And again",
        second["text"],
    ]

    browser.find_element("id", "fork").click()
    wait_for(browser, "return new URLSearchParams(location.hash.slice(1)).get('s') !== arguments[0];", sid)
    fork_id = browser.execute_script("return new URLSearchParams(location.hash.slice(1)).get('s');")
    assert c.get(f"/sessions/{fork_id}", cast_to=object)["parent"] == sid
    wait_for(browser, "return document.querySelectorAll('.msg').length === 4;")
    assert page_messages(browser) == [m["content"] for m in info["messages"]]
