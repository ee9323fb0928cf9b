"""Channel adapters as plugins: discovery (``registry``), their event loop (``runtime``),
and the generator of new adapter packages (``scaffold``)."""
