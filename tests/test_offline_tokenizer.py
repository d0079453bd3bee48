from transformers import CLIPTokenizer

from lmd_utils.offline_tokenizer import BOS, EOS, build_clip_tokenizer


def test_words_are_single_tokens_and_specials_are_last(tmp_path):
    tok = build_clip_tokenizer(["a", "red", "cat", "dog"], model_max_length=12, save_dir=tmp_path)
    enc = tok("a red cat and a dog", padding="max_length", max_length=12)
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens[:4] == [BOS, "a</w>", "red</w>", "cat</w>"]
    assert "dog</w>" in tokens and tokens[-1] == EOS
    assert tok.convert_tokens_to_ids(EOS) == len(tok) - 1 == max(enc.input_ids)
    # unknown words still tokenize, letter by letter
    assert tok.convert_ids_to_tokens(tok("bobcat").input_ids)[1:-1] == ["b", "o", "b", "cat</w>"]
    # and the saved tokenizer reloads identically
    assert CLIPTokenizer.from_pretrained(tmp_path)("a red cat").input_ids == tok("a red cat").input_ids


def test_single_token_order_repairs_pre_empted_merges():
    from lmd_utils.offline_tokenizer import single_token_order

    words = ["right", "triangle", "at", "cat", "green"]
    naive = build_clip_tokenizer(words)
    assert len(naive("triangle", add_special_tokens=False).input_ids) > 1  # "ri" of "right" pre-empts it
    order = single_token_order(words)
    tok = build_clip_tokenizer(order)
    assert sorted(order) == sorted(words)
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in words)
