"""Training stages (coarse, fine, edit) and the loop contract they share."""
