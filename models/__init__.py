"""Classifier definitions, training and loading, with the preprocessing spec stored beside each model.

Imports nothing else of this project.
"""
