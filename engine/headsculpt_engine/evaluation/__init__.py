"""`headsculpt eval`: the papers' CLIP metrics for finished runs, and a page to look at them."""
