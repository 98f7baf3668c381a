"""Prompts a closed-vocabulary model cannot draw are refused with a message, not optimized into a blob."""

import pytest

from dreamsmith.errors import DreamsmithError
from dreamsmith.guidance.prompt_check import check_prompt, normalize_prompt


class Closed:
    known_prompts = ["a red cube", "an orange cone", "a blue torus", "a gray sphere"]


def test_articles_case_and_spacing_do_not_matter():
    assert normalize_prompt("  An  Orange cone. ") == normalize_prompt("a orange cone")
    check_prompt("A Red Cube", Closed())
    check_prompt("a orange cone", Closed())


def test_unknown_prompt_names_the_model_limits_and_the_way_out():
    with pytest.raises(DreamsmithError) as error:
        check_prompt("a hamburger", Closed())
    message = str(error.value)
    assert "only its 4 captions" in message and "'a hamburger'" in message and "--model" in message


def test_open_models_accept_anything_but_an_empty_prompt():
    class Open:
        known_prompts = None

    check_prompt("a hamburger", Open())
    with pytest.raises(DreamsmithError, match="empty"):
        check_prompt("  ", Open())
