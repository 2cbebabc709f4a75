"""A rendered RGB-D tabletop world in the refer layout (``coupalign sim``)."""
