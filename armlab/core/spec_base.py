"""The building blocks of every spec model: strict models, the key pattern, integer bounds."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"

Key = Annotated[
    str,
    Field(
        pattern=KEY_PATTERN,
        description="Lower-case letters, digits, '_' and '-'; 1-64 characters, "
        "starting with a letter or digit.",
        examples=["home-recs"],
    ),
]



#: Integers stored in 32-bit columns (burn_in, attribution_window_s) or compared with them.
INT32_MAX = 2**31 - 1
#: Integers stored in JSON columns stay exactly representable as doubles.
JSON_INT_MAX = 2**53


class StrictModel(BaseModel):
    """Unknown fields are errors: a typo such as ``aplha`` must not be silently ignored.
    NaN and Infinity are errors too (JSON columns cannot store them, and no parameter means
    anything at infinity)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
