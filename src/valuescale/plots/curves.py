"""stub."""

from valuescale.plots._common import NoData


def fig_learning_curves(tables, settings):
    raise NoData("todo")


def fig_preprocessing(tables, settings):
    raise NoData("todo")
