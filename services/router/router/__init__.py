"""The node's SLEE container: event router, SBB entities, activities, naming."""
