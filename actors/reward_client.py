"""HTTP client of the reward service, for the PPO engine when `ppo.reward.reward_url` is set.

Connection failures, timeouts and overload answers (408/429/5xx) are retried with exponential backoff;
a request the service rejects as invalid (other 4xx) fails at once with the service's message. After the
last attempt the error names the URL, so a run that cannot score says where it tried. A batch larger than the
service's per-request limit (serve.max_pairs_per_request) goes in parts of that size, sent at once: the service
batches them together and spreads them over its replicas, and the scores come back in order.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests

from common.errors import RewardServiceError

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
MAX_PARTS_IN_FLIGHT = 8


class RewardClient:
    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, token: str | None = None,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, max_pairs: int = 256):
        self.url = url.rstrip("/")
        self.max_pairs = max_pairs
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def score(self, prompts: list, responses: list[str]) -> list[float]:
        """Rewards of `responses`; each prompt is a user message string or a list of chat turns."""
        def one(part: slice) -> list[float]:
            body = self._post("/score", {"prompts": prompts[part], "responses": responses[part]})
            return self._floats(body, "scores", len(responses[part]))

        return self._in_parts(len(responses), one)

    def get_reward(self, queries: list[str], prompts: list[str] | None = None) -> list[float]:
        """Rewards through the OpenRLHF-style endpoint (queries = rendered prompt + response)."""
        def one(part: slice) -> list[float]:
            payload = {"query": queries[part]} if prompts is None else {"query": queries[part],
                                                                         "prompts": prompts[part]}
            return self._floats(self._post("/get_reward", payload), "rewards", len(queries[part]))

        return self._in_parts(len(queries), one)

    def _in_parts(self, total: int, send) -> list[float]:
        """`send(slice)` for each part of at most max_pairs items, at most MAX_PARTS_IN_FLIGHT at a time; the
        parts' scores joined in order (the first failing part's error is raised)."""
        parts = [slice(start, start + self.max_pairs) for start in range(0, total, self.max_pairs)]
        if len(parts) <= 1:
            return send(slice(0, total))
        with ThreadPoolExecutor(min(len(parts), MAX_PARTS_IN_FLIGHT), thread_name_prefix="reward-part") as pool:
            return [score for scores in pool.map(send, parts) for score in scores]

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "RewardClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_authorized(self) -> None:
        """Fail now, naming the URL, when nothing answers there (after the same retries with backoff as a score)
        or when the service refuses this client's token: a run checks this before it starts its roles. /stats
        needs the token whenever the service has one, so a wrong or missing token shows here."""
        response = self._request("GET", "/stats")
        if response.status_code in (401, 403):
            raise RewardServiceError(f"reward service at {self.url} refused the token (HTTP {response.status_code}: "
                                     f"{_error_text(response)})")
        if response.status_code >= 400:  # e.g. 404: something answers there, but not the reward service's routes
            raise RewardServiceError(f"{self.url} answered GET /stats with HTTP {response.status_code} "
                                     f"({_error_text(response)}): is it the reward service's address, its route "
                                     f"prefix included?")

    def _post(self, path: str, payload: dict) -> dict:
        response = self._request("POST", path, json=payload)
        if response.status_code >= 400:
            failure = f"HTTP {response.status_code}: {_error_text(response)}"
            raise RewardServiceError(f"reward service at {self.url}{path} rejected the request ({failure})")
        try:
            return response.json()
        except ValueError:
            raise RewardServiceError(f"reward service at {self.url}{path} answered HTTP {response.status_code} "
                                     f"without JSON: {response.text[:200]!r}") from None

    def _request(self, method: str, path: str, retry_status=RETRYABLE_STATUS, **kwargs) -> requests.Response:
        """The first answer whose status is not in `retry_status`; connection failures, timeouts and those
        statuses are retried with backoff."""
        url = f"{self.url}{path}"
        failure = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff(attempt))
            try:
                response = self._session.request(method, url, timeout=self.timeout_s, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code not in retry_status:
                return response
            failure = f"HTTP {response.status_code}: {_error_text(response)}"
        raise RewardServiceError(f"reward service at {url} failed after {self.retries + 1} attempts "
                                 f"({self.retries} retries with backoff): {failure}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): doubling, capped."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)

    def _floats(self, body: dict, key: str, expected: int) -> list[float]:
        values = body.get(key) if isinstance(body, dict) else None
        if not isinstance(values, list) or len(values) != expected:
            raise RewardServiceError(f"reward service at {self.url} answered without {expected} {key!r}: {body!r:.200}")
        return [float(v) for v in values]


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)[:200]
