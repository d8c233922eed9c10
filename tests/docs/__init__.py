"""The documentation's code samples (docs_src/), run as the pages show them."""
