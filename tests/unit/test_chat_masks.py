"""Loss only on assistant tokens: the mask of a hand-built multi-turn chat, checked token by token."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.chat import IGNORE_INDEX, encode_chat, encode_prompt
from actors.modeling import DEFAULT_CHAT_TEMPLATE, check_model_dir, load_tokenizer
from common.errors import ModelDirError

POLICY = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "stories260K-hd32"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ok"}]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(POLICY)


def test_tokenizer_without_pad_or_template_gets_both(tokenizer):
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE


def test_only_assistant_replies_and_their_eos_are_trained(tokenizer):
    enc = encode_chat(tokenizer, CHAT)
    trained = "".join(tokenizer.decode([i]) if lab != IGNORE_INDEX else "|" for i, lab in zip(enc.input_ids,
                                                                                             enc.labels))
    # Everything outside the two replies is masked ('|'); each reply keeps its EOS and the line break.
    assert tokenizer.decode(enc.input_ids) == ("<s>Be brief.\n\nUser: hi\nAssistant: hello</s>\n"
                                               "User: bye\nAssistant: ok</s>\n")
    spans = [s for s in trained.split("|") if s]
    assert spans == ["hello</s>\n", "ok</s>\n"]
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(enc.input_ids, enc.labels))


def test_truncation_keeps_mask_aligned(tokenizer):
    full = encode_chat(tokenizer, CHAT)
    short = encode_chat(tokenizer, CHAT, max_length=10)
    assert short.input_ids == full.input_ids[:10] and short.labels == full.labels[:10]
    assert short.num_trained == 0


def test_prompt_ends_with_assistant_header_and_truncates_left(tokenizer):
    ids = encode_prompt(tokenizer, CHAT[:2])
    assert tokenizer.decode(ids).endswith("User: hi\nAssistant:")
    assert encode_prompt(tokenizer, CHAT[:2], max_tokens=5) == ids[-5:]  # one turn over the budget: its end


def test_a_long_chat_loses_its_oldest_turns_whole_keeping_bos_and_the_system_turn(tokenizer):
    chat = [CHAT[0]] + [{"role": role, "content": f"turn {i} " + "word " * 10}
                        for i, role in enumerate(["user", "assistant"] * 4)] + [{"role": "user", "content": "last?"}]
    whole = encode_prompt(tokenizer, chat)
    ids = encode_prompt(tokenizer, chat, max_tokens=len(whole) - 10)
    text = tokenizer.decode(ids)
    assert len(ids) <= len(whole) - 10 and ids[0] == tokenizer.bos_token_id
    assert "Be brief." in text and "turn 0" not in text and text.endswith("User: last?\nAssistant:")
    assert tokenizer.decode(encode_prompt(tokenizer, [CHAT[0]] + chat[3:])) == text  # turns 0-1 dropped whole


def test_missing_or_malformed_model_dir(tmp_path):
    with pytest.raises(ModelDirError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelDirError, match="has no config.json"):
        check_model_dir(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{broken")
    with pytest.raises(ModelDirError, match="is not valid JSON"):
        check_model_dir(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="has no weights"):
        check_model_dir(tmp_path / "m")


@pytest.mark.parametrize("family, first, last", [
    # Qwen3 keeps an answer's <think> block only while it is the last turn; Phi-3 ends a rendered conversation with
    # EOS: growing renders trained "<|im_start|>user\nAg" and "<|us" of the next turn with the first reply.
    ("qwen3", "hello<|im_end|>\n", "<think>\n\n</think>\n\nok<|im_end|>\n"),
    ("phi3", "hello<|end|>\n", "ok<|end|>\n</s>"),
    ("qwen2_5", "hello<|im_end|>\n", "ok<|im_end|>\n"),  # templates that only append: growing renders, unchanged
    ("llama3", "hello<|eot_id|>", "ok<|eot_id|>"),
])
def test_each_reply_and_its_end_of_turn_marker_are_found_in_real_templates(tokenizer, family, first, last):
    """The official chat templates TRL ships (trl/chat_templates), rendered with the tiny tokenizer."""
    import copy

    import trl

    from actors.chat import assistant_spans

    templated = copy.deepcopy(tokenizer)
    templated.chat_template = (Path(trl.__file__).parent / "chat_templates" / f"{family}.jinja").read_text()
    text, spans = assistant_spans(templated, CHAT)
    assert [text[a:b] for a, b in spans] == [first, last]
    # A reply whose words the user's turn holds is found after its own header, not in the user's turn; an empty
    # earlier reply trains its end-of-turn marker alone.
    echo = [{"role": "user", "content": "Say hello please"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": ""},
            {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ok"}]
    text, spans = assistant_spans(templated, echo)
    assert text[spans[0][0]:spans[0][1]] == first and spans[0][0] > text.index("Say hello please") + 16
    assert text[spans[1][0]:spans[1][1]] == first[len("hello"):]
