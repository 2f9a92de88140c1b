"""Loads Coffer's status page in Debian's chromium, headless, through Selenium, while a backup
runs: refuses a wrong token, signs in with a right one, watches the run's progress change on the
page and waits for its final state. Prints what it saw as one JSON line; exits non-zero, with the
reason, when the page does not show what it should.

    status_page.py --url http://127.0.0.1:PORT/ --token-file F --run-id ID --bin .tools/bin

Started by tests/e2e/status_page.rs (scripts/install-tools browser installs what it needs).
"""

import argparse
import json
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as seen
from selenium.webdriver.support.ui import WebDriverWait

ENDED = ("succeeded", "failed", "canceled")
# What a page being replaced (the form sent, the tables redrawn) throws at a reader.
REDRAWN = (NoSuchElementException, StaleElementReferenceException)
# chromedriver's word for the same race when an element is detached during the call itself:
# an "unknown error", not a stale element.
DETACHED = "does not belong to the document"


def redrawn(error):
    """Whether `error` says only that the page redrew what was being read."""
    return isinstance(error, REDRAWN) or DETACHED in (error.msg or "")


def settled(read, attempts=20):
    """`read()` once the page holds still long enough for it: retried while redraws get in the
    way, a quarter of a second apart."""
    for _ in range(attempts - 1):
        try:
            return read()
        except WebDriverException as error:
            if not redrawn(error):
                raise
            time.sleep(0.25)
    return read()


def wait_until(driver, seconds, condition):
    """WebDriverWait(...).until(condition), the condition tried again when a redraw got in its
    way."""
    def check(current):
        try:
            return condition(current)
        except WebDriverException as error:
            if redrawn(error):
                return False
            raise

    return WebDriverWait(driver, seconds, ignored_exceptions=REDRAWN).until(check)


def browser(bin_dir):
    options = webdriver.ChromeOptions()
    options.binary_location = f"{bin_dir}/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    # An explicit driver: Selenium Manager would try to download one.
    return webdriver.Chrome(service=Service(executable_path=f"{bin_dir}/chromedriver"),
                            options=options)


def run_row(driver, run_id):
    rows = driver.find_elements(By.CSS_SELECTOR, f'#runs tr[data-run-id="{run_id}"]')
    return rows[0] if rows else None


def node_fractions(row):
    """The value of each node's progress bar in the run's row."""
    return [float(bar.get_attribute("value") or 0)
            for bar in row.find_elements(By.CSS_SELECTOR, ".node progress")]


def sign_in(driver, url, token):
    driver.get(url)
    wait_until(driver, 20, seen.visibility_of_element_located((By.ID, "login")))
    box = driver.find_element(By.ID, "token")
    box.send_keys(token)
    driver.find_element(By.ID, "sign-in").click()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--bin", required=True)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    with open(args.token_file, encoding="utf-8") as file:
        token = file.read().strip()

    driver = browser(args.bin)
    try:
        # A wrong token is refused and shows nothing of the status.
        sign_in(driver, args.url, "coffer_00000000000000000000000000000000_wrong")
        try:
            wait_until(driver, 20,
                       lambda d: "not valid" in d.find_element(By.TAG_NAME, "body").text)
        except TimeoutException:
            sys.exit("a wrong token was not refused: "
                     f"{driver.find_element(By.TAG_NAME, 'body').text!r}")

        sign_in(driver, args.url, token)
        wait_until(driver, 20, seen.visibility_of_element_located((By.ID, "status")))
        if driver.find_element(By.ID, "login").is_displayed():
            sys.exit("the sign-in form is still shown after signing in")

        fractions_seen = []
        texts_seen = []
        states_seen = []
        deadline = time.monotonic() + args.timeout
        final = None
        while time.monotonic() < deadline:
            try:
                row = run_row(driver, args.run_id)
                if row is not None:
                    state = row.get_attribute("data-state")
                    if not states_seen or states_seen[-1] != state:
                        states_seen.append(state)
                    fractions = node_fractions(row)
                    if fractions and (not fractions_seen or fractions_seen[-1] != fractions):
                        fractions_seen.append(fractions)
                    text = row.find_element(By.CSS_SELECTOR, ".progress-text").text
                    if not texts_seen or texts_seen[-1] != text:
                        texts_seen.append(text)
                    if state in ENDED:
                        final = {
                            "state": state,
                            "row": row.text,
                            "nodes": fractions,
                        }
                        break
            except WebDriverException as error:
                if not redrawn(error):
                    raise
                # the page redrew the table between two reads
            time.sleep(0.25)
        if final is None:
            sys.exit(f"run {args.run_id} did not end on the page within {args.timeout} s; "
                     f"states seen {states_seen}")

        # The backup the run made is listed once the page refreshes after the run's end.
        wait_until(driver, 10,
                   lambda d: d.find_elements(By.CSS_SELECTOR, "#backups tr[data-backup-id]"))
        health = settled(lambda: [cell.text for cell in driver.find_elements(
            By.CSS_SELECTOR, "#clusters tr[data-node-id] td:nth-child(6)")])
        print(json.dumps({
            "states": states_seen,
            "fractions": fractions_seen,
            "texts": texts_seen,
            "final": final,
            "node_health": health,
            "backups": settled(lambda: len(
                driver.find_elements(By.CSS_SELECTOR, "#backups tr[data-backup-id]"))),
            "title": driver.title,
        }))
    except WebDriverException as error:
        sys.exit(f"the browser failed: {error.msg}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
