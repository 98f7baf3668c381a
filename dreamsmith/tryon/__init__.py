"""Texture sources: something that edits renders of an asset (a garment try-on, a decal), projected back into
its UV texture (``projection``), with a short guidance pass filling what no view saw (``dreamsmith tryon``)."""
