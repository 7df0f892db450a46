"""Built-in rrtool oracles, registered under the ``rrtool.oracles`` entry-point group."""
