// Moved to src/patterns/ (one file per pattern); this re-export goes once its importers are updated.
export { isPatternName, patternInputSchemas, patternNames, type PatternName } from './patterns/index.js';
