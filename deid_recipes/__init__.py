"""De-identification recipes (deid format) and the engine that compiles and applies them."""

from deid_recipes.engine import DeidError, Engine, SubjectContext
from deid_recipes.recipe import Recipe, find_recipe, load_recipe

__all__ = ["DeidError", "Engine", "Recipe", "SubjectContext", "find_recipe", "load_recipe"]
