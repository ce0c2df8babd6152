"""Writers and readers for hubquant artefacts."""
