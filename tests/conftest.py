"""Fixtures shared by the interop tests on the tiny SDXL-topology models."""

import pytest


@pytest.fixture(scope="module")
def shapes():
    import _tiny_models as T

    T.quiet_loaders()
    return T.build_models()


@pytest.fixture(scope="module")
def all_names(shapes):
    import _tiny_models as T

    return list(T.live_modules(shapes))
