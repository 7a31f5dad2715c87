"""`headsculpt batch`: variations of one prompt from attribute lists (StyleAvatar3D's attribute-related
prompts), run one generation each, locally or as jobs on an engine server, with a resumable manifest."""
