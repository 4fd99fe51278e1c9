"""Shared by the workflow's scripts: send logging, warnings and stderr to the rule's log file."""

import contextlib
import logging
import sys
import traceback


@contextlib.contextmanager
def logged(snakemake):
    """Log to ``snakemake.log[0]``; a failure's traceback goes there too before it propagates."""
    with open(snakemake.log[0], "a", buffering=1) as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        old_stderr, old_stdout = sys.stderr, sys.stdout
        sys.stderr = sys.stdout = stream
        try:
            logging.getLogger("workflow").info("rule %s", snakemake.rule)
            yield logging.getLogger("workflow")
        except BaseException:
            traceback.print_exc(file=stream)
            raise
        finally:
            sys.stderr, sys.stdout = old_stderr, old_stdout
            root.removeHandler(handler)
