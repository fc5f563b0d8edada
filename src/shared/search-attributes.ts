// Typed keys of vmsnap's custom search attributes, all Keyword. The dev stack registers them; a
// production namespace needs them once: `temporal operator search-attribute create` (docs/operations.md).
import { SearchAttributeType, defineSearchAttributeKey } from '@temporalio/common';
import { SEARCH_ATTRIBUTES } from './names.js';

export const INSTANCE_ID = defineSearchAttributeKey(SEARCH_ATTRIBUTES.instanceId, SearchAttributeType.KEYWORD);
export const PHASE = defineSearchAttributeKey(SEARCH_ATTRIBUTES.phase, SearchAttributeType.KEYWORD);
export const IMAGE_ID = defineSearchAttributeKey(SEARCH_ATTRIBUTES.imageId, SearchAttributeType.KEYWORD);
export const HOST = defineSearchAttributeKey(SEARCH_ATTRIBUTES.host, SearchAttributeType.KEYWORD);
