"""stub."""

from valuescale.plots._common import NoData


def fig_overfitting(tables, settings):
    raise NoData("todo")


def fig_passive_critic(tables, settings):
    raise NoData("todo")
