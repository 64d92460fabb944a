"""RequestBuilder.build: prompt token ids must be plain ints inside the vocabulary."""

from __future__ import annotations

from typing import Any

import pytest

from radixserve.errors import InvalidRequestError
from radixserve.managers.request_builder import RequestBuilder


@pytest.fixture
def builder() -> RequestBuilder:
    return RequestBuilder(tokenizer=None, model_name="m", context_len=64, vocab_size=100)


@pytest.mark.parametrize("ids", [[1, True, 3], [1, 2.0, 3], [1, "2"], [None], [1, [2]]])
def test_token_ids_that_are_not_ints_are_refused(builder: RequestBuilder, ids: list[Any]) -> None:
    with pytest.raises(InvalidRequestError, match="input_ids must be integers") as e:
        builder.build(ids, builder.sampling_params({"max_new_tokens": 2}))
    assert e.value.code == "invalid_token_id"


def test_plain_int_ids_are_taken(builder: RequestBuilder) -> None:
    req = builder.build([1, 2, 99], builder.sampling_params({"max_new_tokens": 2}))
    assert [list(r.input_ids) for r in req.reqs] == [[1, 2, 99]]
